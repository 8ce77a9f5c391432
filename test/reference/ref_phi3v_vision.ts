// Phi-3.5-vision reference, image side (PHI3V.md §3.6, §4): CLIP ViT on each 336×336 tile
// (class token, position embedding, pre_layrnorm, quick_gelu layers, hidden_states[layer_idx]
// without CLS), the HD assembly ("sub_glb": 2×2 merge, sub grid with sub_GN after each row,
// glb_GN, global grid with sub_GN after each row) and the GELU projection.
import { attendOne, f32, gelu, layerNorm, linear, quickGelu } from "./ref_math.ts";
import { PHI3V_GRID, PHI3V_PATCH, PHI3V_TILE, type RefPhi3VConfig, type RefPhi3VWeights } from "./ref_phi3v_model.ts";

const TILE_VALUES = 3 * PHI3V_TILE * PHI3V_TILE;
const PATCHES = PHI3V_GRID * PHI3V_GRID; // 576
const MERGED = PHI3V_GRID / 2; // 12

/** §3.6: (hc·wc + 1)·144 + 1 + (hc + 1)·12 for image_size [H, W] (multiples of 336). */
export function phi3vNumImageTokens(imageSize: readonly [number, number]): number {
  const { hc, wc } = tileGrid(imageSize);
  return (hc * wc + 1) * MERGED * MERGED + 1 + (hc + 1) * MERGED;
}

export function tileGrid(imageSize: readonly [number, number]): { hc: number; wc: number } {
  const [h, w] = imageSize;
  if (h % PHI3V_TILE !== 0 || w % PHI3V_TILE !== 0 || h <= 0 || w <= 0) throw new Error(`reference: image_size ${h}x${w} is not a positive multiple of 336`);
  return { hc: h / PHI3V_TILE, wc: w / PHI3V_TILE };
}

/** CLIP on one tile [3, 336, 336] -> [576, C]: hidden_states[layer_idx] without the class token. */
export function clipTileFeatures(config: RefPhi3VConfig, weights: RefPhi3VWeights, tile: Float32Array): Float32Array {
  if (tile.length !== TILE_VALUES) throw new Error(`reference: a tile has ${TILE_VALUES} values, got ${tile.length}`);
  const C = config.vision.width;
  const w = weights.clip;
  const T = PATCHES + 1;
  const P = PHI3V_PATCH;
  const S = PHI3V_TILE;
  // Embeddings: conv (stride 14, no bias) in row-major grid order after the class token, + positions.
  const h = new Float32Array(T * C);
  for (let c = 0; c < C; c++) h[c] = f32(w.classEmbedding[c] + w.positionEmbedding[c]);
  const patch = new Float32Array(3 * P * P);
  for (let gy = 0; gy < PHI3V_GRID; gy++) {
    for (let gx = 0; gx < PHI3V_GRID; gx++) {
      let n = 0;
      for (let ch = 0; ch < 3; ch++) {
        for (let ky = 0; ky < P; ky++) {
          const row = ch * S * S + (gy * P + ky) * S + gx * P;
          for (let kx = 0; kx < P; kx++) patch[n++] = tile[row + kx];
        }
      }
      const t = 1 + gy * PHI3V_GRID + gx;
      for (let c = 0; c < C; c++) {
        const off = c * n;
        let acc = 0;
        for (let k = 0; k < n; k++) acc += patch[k] * w.patchEmbedding[off + k];
        h[t * C + c] = f32(f32(acc) + w.positionEmbedding[t * C + c]);
      }
    }
  }
  let x = layerNorm(h, T, C, w.preNorm.weight, w.preNorm.bias, 1e-5);
  const heads = config.vision.heads;
  const hd = C / heads;
  const scale = f32(hd ** -0.5);
  for (const layer of w.layers) {
    const n1 = layerNorm(x, T, C, layer.norm1.weight, layer.norm1.bias, 1e-5);
    // CLIPAttention scales q by head_dim^-0.5 before q·kᵀ (non-causal).
    const q = linear(n1, T, layer.q).map((v) => f32(v * scale));
    const k = linear(n1, T, layer.k);
    const v = linear(n1, T, layer.v);
    const attn = new Float32Array(T * C);
    for (let hh = 0; hh < heads; hh++) {
      const keys: Float32Array[] = [];
      const values: Float32Array[] = [];
      for (let t = 0; t < T; t++) {
        keys.push(k.subarray(t * C + hh * hd, t * C + (hh + 1) * hd));
        values.push(v.subarray(t * C + hh * hd, t * C + (hh + 1) * hd));
      }
      for (let t = 0; t < T; t++) attendOne(q.subarray(t * C + hh * hd, t * C + (hh + 1) * hd), keys, values, 1, attn, t * C + hh * hd);
    }
    const o = linear(attn, T, layer.out);
    for (let i = 0; i < x.length; i++) x[i] = f32(x[i] + o[i]);
    const n2 = layerNorm(x, T, C, layer.norm2.weight, layer.norm2.bias, 1e-5);
    const mid = linear(n2, T, layer.fc1).map((z) => f32(quickGelu(z)));
    const m = linear(mid, T, layer.fc2);
    for (let i = 0; i < x.length; i++) x[i] = f32(x[i] + m[i]);
  }
  return x.slice(C);
}

/** 2×2 merge of one tile's [576, C] features: merged (i, j) = [f(2i,2j), f(2i,2j+1), f(2i+1,2j), f(2i+1,2j+1)]. */
function mergedToken(f: Float32Array, C: number, i: number, j: number, out: Float32Array, outOff: number): void {
  let o = outOff;
  for (const [dy, dx] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
    const src = ((2 * i + dy) * PHI3V_GRID + (2 * j + dx)) * C;
    out.set(f.subarray(src, src + C), o);
    o += C;
  }
}

/**
 * §4 HD assembly of one image from its tiles' CLIP features (global first, then hc·wc tiles
 * row-major; each [576, C]) -> [num_img_tokens, 4C] before projection.
 */
export function assembleHd(tileFeatures: Float32Array[], C: number, imageSize: readonly [number, number], subGN: Float32Array, glbGN: Float32Array): Float32Array {
  const { hc, wc } = tileGrid(imageSize);
  if (tileFeatures.length < 1 + hc * wc) throw new Error(`reference: ${tileFeatures.length} tiles for a ${hc}x${wc} grid + global`);
  const D = 4 * C;
  const out = new Float32Array(phi3vNumImageTokens(imageSize) * D);
  let n = 0;
  // Sub grid: 12hc rows of 12wc merged tokens, sub_GN after each row.
  for (let r = 0; r < MERGED * hc; r++) {
    for (let c = 0; c < MERGED * wc; c++) {
      const tile = 1 + Math.floor(r / MERGED) * wc + Math.floor(c / MERGED);
      mergedToken(tileFeatures[tile], C, r % MERGED, c % MERGED, out, n++ * D);
    }
    out.set(subGN, n++ * D);
  }
  out.set(glbGN, n++ * D);
  // Global grid: 12 rows of 12 merged tokens, sub_GN after each row.
  for (let r = 0; r < MERGED; r++) {
    for (let c = 0; c < MERGED; c++) mergedToken(tileFeatures[0], C, r, c, out, n++ * D);
    out.set(subGN, n++ * D);
  }
  if (n * D !== out.length) throw new Error(`reference: assembled ${n} vectors, expected ${out.length / D}`);
  return out;
}

/** img_projection: Linear(4C, H) -> exact GELU -> Linear(H, H). */
export function projectImage(weights: RefPhi3VWeights, assembled: Float32Array, rows: number): Float32Array {
  const mid = linear(assembled, rows, weights.proj0).map((z) => f32(gelu(z)));
  return linear(mid, rows, weights.proj2);
}

/** Tiles [(1 + hc·wc (or more, ignored)), 3, 336, 336] -> their CLIP features (only the used ones). */
export function clipImageTiles(config: RefPhi3VConfig, weights: RefPhi3VWeights, pixelValues: Float32Array, imageSize: readonly [number, number]): Float32Array[] {
  const { hc, wc } = tileGrid(imageSize);
  const used = 1 + hc * wc;
  if (pixelValues.length % TILE_VALUES !== 0 || pixelValues.length / TILE_VALUES < used) {
    throw new Error(`reference: pixel values hold ${pixelValues.length / TILE_VALUES} tiles, image_size ${imageSize.join("x")} needs ${used}`);
  }
  const out: Float32Array[] = [];
  for (let t = 0; t < used; t++) out.push(clipTileFeatures(config, weights, pixelValues.subarray(t * TILE_VALUES, (t + 1) * TILE_VALUES)));
  return out;
}

/** Pixel values of one image (global first) + image_size -> projected features [num_img_tokens, H]. */
export function phi3vImageFeatures(config: RefPhi3VConfig, weights: RefPhi3VWeights, pixelValues: Float32Array, imageSize: readonly [number, number]): Float32Array {
  const tiles = clipImageTiles(config, weights, pixelValues, imageSize);
  const assembled = assembleHd(tiles, config.vision.width, imageSize, weights.subGN, weights.glbGN);
  return projectImage(weights, assembled, phi3vNumImageTokens(imageSize));
}
