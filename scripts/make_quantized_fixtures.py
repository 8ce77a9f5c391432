#!/usr/bin/python3
"""Writes test/fixtures/quant/: the decoder linear layers of the tiny Qwen2-VL checkpoint "tiny-a"
(scripts/make_tiny_qwen2vl.ts: hidden 64, intermediate 128, 4 heads / 2 KV heads of 16, 2 layers)
quantized and packed exactly as AutoGPTQ and AutoAWQ write them, one safetensors file per variant,
plus variants.json (each variant's config.json quantization_config and what it exercises).

Followed code (numpy ports, function by function):
  AutoGPTQ  auto_gptq/quantization/quantizer.py   Quantizer.find_params / quantize   (scale, zero of a group)
            auto_gptq/quantization/gptq.py         GPTQ.fasterquant's act-order bookkeeping: columns
                                                   visited in `perm` order, g_idx = [i // group][invperm]
                                                   (static_groups: [perm[i] // group][invperm], trivial)
            auto_gptq/nn_modules/qlinear/qlinear_cuda.py  QuantLinear.pack (bits 4/8): scales.t().half(),
                                                   intweight = round((W[:, k] + zeros*scales[g_idx[k]]) /
                                                   scales_half[g_idx[k]]), qweight [in*bits/32, out] int32 with
                                                   input k at bits bits*(k % (32/bits)) of row k / (32/bits);
                                                   `zeros -= 1` (GPTQ "v1": qzeros holds zero - 1), qzeros
                                                   [groups, out*bits/32] packed the same way along out;
                                                   g_idx int32 [in]; bias .half()
            QuantLinear.forward (torch path): zeros = ((qzeros >> shift) & maxq) + 1,
                                                   W = scales[g_idx] * (q - zeros[g_idx])
  GPTQModel  checkpoint_format "gptq_v2": the same packing without the `zeros -= 1`
            (gptqmodel/utils/model.py convert_gptq_v1_to_v2_format adds the 1 back)
  AutoAWQ   awq/quantize/quantizer.py pseudo_quantize_tensor (zero_point=True): scales =
                                                   (max - min).clamp(1e-5) / 15, zeros = clamp(-round(min /
                                                   scales), 0, 15); then _apply_quant transposes to [groups, out]
            awq/modules/linear/gemm.py WQLinear_GEMM.from_linear: intweight as above (no -1 on zeros),
                                                   qweight [in, out/8] int32 packed along out with
                                                   AWQ_ORDER [0, 2, 4, 6, 1, 3, 5, 7] (column col*8 + order[i]
                                                   at bits 4*i), qzeros [groups, out/8] the same way
            awq/utils/packing_utils.py unpack_awq / reverse_awq_order (AWQ_REVERSE_ORDER
                                                   [0, 4, 1, 5, 2, 6, 3, 7]) / dequantize_gemm: W^T = (q - z) * s

The float weights stand in for a trained layer (uniform, std 1/sqrt(in_features), as the tiny
checkpoints'), rounded to f16 as a model in half precision is, and quantized round-to-nearest by
the quantizers above (GPTQ's Hessian error feedback changes which codes are chosen, not how they
are stored, so it is left out). Act order uses a seeded random permutation in place of
argsort(diag(H)). Group sizes: tiny-a's in_features are 64 and 128, so group 128 only divides
down_proj's; the variants use 32, 64 and -1 (whole row), which divide every layer.

Deterministic (seeded per variant and tensor): run it again and the files come out the same.
Usage: /usr/bin/python3 scripts/make_quantized_fixtures.py   (needs python3-numpy only)
"""
import json
import os
import struct
import zlib

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "quant")

# tiny-a (scripts/make_tiny_qwen2vl.ts): hidden 64, heads 4, kvHeads 2 (head_dim 16), intermediate 128.
HIDDEN, HEADS, KV_HEADS, INTER, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS


def linears():
    """(name, out_features, in_features, has_bias) of every decoder linear, in checkpoint order."""
    kv = KV_HEADS * HEAD_DIM
    out = []
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.self_attn.q_proj", HIDDEN, HIDDEN, True),
            (f"{p}.self_attn.k_proj", kv, HIDDEN, True),
            (f"{p}.self_attn.v_proj", kv, HIDDEN, True),
            (f"{p}.self_attn.o_proj", HIDDEN, HIDDEN, False),
            (f"{p}.mlp.gate_proj", INTER, HIDDEN, False),
            (f"{p}.mlp.up_proj", INTER, HIDDEN, False),
            (f"{p}.mlp.down_proj", HIDDEN, INTER, False),
        ]
    return out


def rng_for(variant, name):
    # The v2 variant shares its v1 twin's seed: same codes and scales, only the stored zeros differ.
    base = variant.removesuffix("_v2")
    return np.random.default_rng(zlib.crc32(f"{base}/{name}".encode()))


def float_layer(rng, out_f, in_f, bias):
    std = 1.0 / np.sqrt(in_f)
    a = std * np.sqrt(3.0)
    w = rng.uniform(-a, a, size=(out_f, in_f)).astype(np.float16).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=(out_f,)).astype(np.float16) if bias else None
    return w, b


# ---------------------------------------------------------------- AutoGPTQ


def gptq_find_params(x, bits, sym):
    """Quantizer.find_params(x, weight=True) with perchannel=True, mse=False; x [out, cols] f32."""
    maxq = np.float32(2**bits - 1)
    zero_t = np.zeros(x.shape[0], dtype=np.float32)
    xmin = np.minimum(x.min(1), zero_t)
    xmax = np.maximum(x.max(1), zero_t)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1
    xmax[both] = 1
    scale = ((xmax - xmin) / maxq).astype(np.float32)
    if sym:
        zero = np.full_like(scale, (maxq + 1) / 2)
    else:
        zero = np.round(-xmin / scale).astype(np.float32)
    return scale[:, None], zero[:, None]


def gptq_quantize(x, scale, zero, bits):
    """quantizer.quantize: scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)."""
    q = np.clip(np.round(x / scale) + zero, 0, 2**bits - 1)
    return (scale * (q - zero)).astype(np.float32)


def gptq_layer(w, group, bits, sym, act_order, static_groups, rng):
    """RTN with GPTQ's quantizer and fasterquant's act-order bookkeeping: (Q, scale, zero, g_idx);
    scale/zero [out, groups] as fasterquant returns them (torch.cat(scale, dim=1))."""
    out_f, in_f = w.shape
    g = in_f if group == -1 else group
    perm = rng.permutation(in_f) if act_order else np.arange(in_f)
    invperm = np.argsort(perm)
    W = w[:, perm]
    Q = np.zeros_like(W)
    scales, zeros = [], []
    if static_groups:  # groups fixed on the original column order, found up front
        groups = []
        for i in range(0, in_f, g):
            s, z = gptq_find_params(w[:, i:i + g], bits, sym)
            groups.append((s, z))
        for j in range(in_f):
            s, z = groups[perm[j] // g]
            Q[:, j:j + 1] = gptq_quantize(W[:, j:j + 1], s, z, bits)
        scales = [s for s, _ in groups]
        zeros = [z for _, z in groups]
    else:
        for i in range(0, in_f, g):
            s, z = gptq_find_params(W[:, i:i + g], bits, sym)
            scales.append(s)
            zeros.append(z)
            Q[:, i:i + g] = gptq_quantize(W[:, i:i + g], s, z, bits)
    if static_groups and act_order:
        g_idx = np.array([perm[i] // g for i in range(in_f)], dtype=np.int32)
    else:
        g_idx = np.array([i // g for i in range(in_f)], dtype=np.int32)
    if act_order:
        Q = Q[:, invperm]
        g_idx = g_idx[invperm]
    return Q.astype(np.float16), np.concatenate(scales, 1), np.concatenate(zeros, 1), g_idx


def gptq_pack(W, scales, zeros, g_idx, bits, bias, v2=False):
    """QuantLinear.pack (qlinear_cuda.py), bits 4 and 8. W f16 [out, in]; scales/zeros [out, groups]."""
    out_f, in_f = W.shape
    scales = np.ascontiguousarray(scales.T)  # scales.t().contiguous()
    zeros = np.ascontiguousarray(zeros.T)
    scale_zeros = zeros * scales  # f32
    scales_h = scales.astype(np.float16)  # self.scales = scales.clone().half()
    intweight = np.zeros((out_f, in_f), dtype=np.int64)
    Wf = W.astype(np.float32)
    for idx in range(in_f):
        gi = g_idx[idx]
        intweight[:, idx] = np.round((Wf[:, idx] + scale_zeros[gi]) / scales_h[gi].astype(np.float32))
    assert intweight.min() >= 0 and intweight.max() <= 2**bits - 1, "code out of range"
    intweight = np.ascontiguousarray(intweight.T).astype(np.uint32)  # [in, out]
    per = 32 // bits
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = 0
    row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + per):
            qweight[row] |= intweight[j] << np.uint32(bits * (j - i))
        i += per
        row += 1
    zi = zeros.astype(np.int64)
    if not v2:
        zi = zi - 1  # zeros -= 1
        assert zi.min() >= 0, "a v1 zero of 0 would be stored as -1 and corrupt its word"
    zu = zi.astype(np.uint32)
    qzeros = np.zeros((zu.shape[0], zu.shape[1] // 32 * bits), dtype=np.uint32)
    i = 0
    col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + per):
            qzeros[:, col] |= zu[:, j] << np.uint32(bits * (j - i))
        i += per
        col += 1
    t = {
        "qweight": qweight.view(np.int32),
        "qzeros": qzeros.view(np.int32),
        "scales": scales_h,
        "g_idx": g_idx.astype(np.int32),
    }
    if bias is not None:
        t["bias"] = bias.astype(np.float16)
    return t


# ---------------------------------------------------------------- AutoAWQ

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pseudo_quantize(w, group, bits=4):
    """pseudo_quantize_tensor(w) with zero_point=True; returns (w_q f16, scales [out, groups], zeros)."""
    out_f, in_f = w.shape
    x = w.astype(np.float32).reshape(-1, group)
    max_val = x.max(1, keepdims=True)
    min_val = x.min(1, keepdims=True)
    max_int = 2**bits - 1
    scales = (np.maximum(max_val - min_val, np.float32(1e-5)) / max_int).astype(np.float32)
    zeros = np.clip(-np.round(min_val / scales), 0, max_int).astype(np.float32)
    xq = (np.clip(np.round(x / scales) + zeros, 0, max_int) - zeros) * scales
    return xq.reshape(out_f, in_f).astype(np.float16), scales.reshape(out_f, -1), zeros.reshape(out_f, -1)


def awq_pack(W, scales, zeros, group, bias, bits=4):
    """WQLinear_GEMM.from_linear: scales/zeros come in [groups, out] (_apply_quant's .t())."""
    out_f, in_f = W.shape
    scales = np.ascontiguousarray(scales.T)
    zeros = np.ascontiguousarray(zeros.T)
    scale_zeros = zeros * scales
    scales_h = scales.astype(np.float16)
    pack_num = 32 // bits
    Wf = W.astype(np.float32)
    intweight = np.zeros((out_f, in_f), dtype=np.int64)
    for idx in range(in_f):
        intweight[:, idx] = np.round((Wf[:, idx] + scale_zeros[idx // group]) / scales_h[idx // group].astype(np.float32))
    assert intweight.min() >= 0 and intweight.max() <= 2**bits - 1, "code out of range"
    intweight = np.ascontiguousarray(intweight.T).astype(np.uint32)  # [in, out]
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 32 * bits), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            qweight[:, col] |= intweight[:, col * pack_num + AWQ_ORDER[i]] << np.uint32(i * bits)
    zu = zeros.astype(np.int64).astype(np.uint32)
    qzeros = np.zeros((zu.shape[0], zu.shape[1] // 32 * bits), dtype=np.uint32)
    for col in range(zu.shape[1] // pack_num):
        for i in range(pack_num):
            qzeros[:, col] |= zu[:, col * pack_num + AWQ_ORDER[i]] << np.uint32(i * bits)
    t = {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": scales_h}
    if bias is not None:
        t["bias"] = bias.astype(np.float16)
    return t


# ---------------------------------------------------------------- safetensors by hand

DTYPES = {np.dtype(np.int32): "I32", np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def write_safetensors(path, tensors):
    """u64 LE header length | JSON header | data (tensors in insertion order, 8-aligned header)."""
    header = {}
    blobs = []
    off = 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- variants


def gptq_config(bits, group, sym, desc_act=False, static_groups=False, fmt="gptq"):
    return {
        "bits": bits, "group_size": group, "damp_percent": 0.01, "desc_act": desc_act, "static_groups": static_groups,
        "sym": sym, "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
        "quant_method": "gptq", "checkpoint_format": fmt,
    }


def awq_config(group):
    return {"quant_method": "awq", "zero_point": True, "group_size": group, "bits": 4, "version": "gemm", "modules_to_not_convert": None}


VARIANTS = {
    "gptq_4bit_sym_g64": (gptq_config(4, 64, True), "GPTQ v1, 4-bit symmetric (stored zero 7 = 8 - 1), group 64"),
    "gptq_4bit_sym_gm1": (gptq_config(4, -1, True), "GPTQ v1, 4-bit symmetric, group -1 (one group per row)"),
    "gptq_4bit_asym_g32": (gptq_config(4, 32, False), "GPTQ v1, 4-bit asymmetric, group 32"),
    "gptq_4bit_asym_gm1": (gptq_config(4, -1, False), "GPTQ v1, 4-bit asymmetric, group -1"),
    "gptq_8bit_sym_g64": (gptq_config(8, 64, True), "GPTQ v1, 8-bit symmetric (stored zero 127), group 64"),
    "gptq_8bit_asym_g32": (gptq_config(8, 32, False), "GPTQ v1, 8-bit asymmetric, group 32"),
    "gptq_8bit_asym_gm1": (gptq_config(8, -1, False), "GPTQ v1, 8-bit asymmetric, group -1"),
    "gptq_4bit_asym_g32_v2": (gptq_config(4, 32, False, fmt="gptq_v2"), "GPTQ v2 (GPTQModel: zeros stored as they are), 4-bit asymmetric, group 32"),
    "gptq_4bit_descact_static_g32": (gptq_config(4, 32, False, True, True), "desc_act with static_groups: act order, trivial g_idx (loads)"),
    "gptq_4bit_descact_g32": (gptq_config(4, 32, False, True, False), "desc_act without static groups: non-trivial g_idx permutation (rejected)"),
    "awq_4bit_g64": (awq_config(64), "AutoAWQ GEMM, 4-bit with zero points, group 64"),
    "awq_4bit_g32": (awq_config(32), "AutoAWQ GEMM, 4-bit with zero points, group 32"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {}
    for variant, (qc, what) in VARIANTS.items():
        tensors = {}
        for name, out_f, in_f, has_bias in linears():
            rng = rng_for(variant, name)
            w, b = float_layer(rng, out_f, in_f, has_bias)
            if qc["quant_method"] == "awq":
                wq, s, z = awq_pseudo_quantize(w, qc["group_size"])
                parts = awq_pack(wq, s, z, qc["group_size"], b)
            else:
                Q, s, z, g_idx = gptq_layer(w, qc["group_size"], qc["bits"], qc["sym"], qc["desc_act"], qc["static_groups"], rng)
                parts = gptq_pack(Q, s, z, g_idx, qc["bits"], b, v2=qc["checkpoint_format"] == "gptq_v2")
            for k, v in parts.items():
                tensors[f"{name}.{k}"] = v
        write_safetensors(os.path.join(OUT, f"{variant}.safetensors"), tensors)
        manifest[variant] = {"description": what, "quantization_config": qc}
    with open(os.path.join(OUT, "variants.json"), "w") as f:
        json.dump({"shape": "tiny-a", "variants": manifest}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
