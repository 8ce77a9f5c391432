import code from "../../shaders/image_composite.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { allocRgbxImage, gpuImageBytes, type GpuImage } from "../vision/gpu_image.ts";

/**
 * A GpuImage with alpha composited over an opaque background colour (Pillow-exact, as
 * vision/alpha.ts on the CPU). Returns a new RGBX image; the caller releases both.
 */
export function compositeImage(rec: Recorder, img: GpuImage, background: readonly [number, number, number]): GpuImage {
  if (img.channels !== 4 || img.rowBytes % 4 !== 0) throw new WebvlmError("internal", "image_composite: needs a 4-channel image with word-aligned rows");
  if (!background.every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) {
    throw new WebvlmError("bad_request", `alpha composite: background ${JSON.stringify(background)} is not three integers in 0..255`);
  }
  const out = allocRgbxImage(rec.ctx, img.width, img.height, "image_composite");
  rec.dispatch({
    code,
    uniforms: packUniforms("uuuu", img.width, img.height, img.rowBytes, background[0] | (background[1] << 8) | (background[2] << 16)),
    bindings: [
      { buffer: img.buffer, offset: 0, size: gpuImageBytes(img.rowBytes, img.height) },
      { buffer: out.buffer, offset: 0, size: gpuImageBytes(out.rowBytes, out.height) },
    ],
    workgroups: grid2d(Math.ceil((img.width * img.height) / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "image_composite",
  });
  return out;
}
