// Qwen2-VL's image sizing: transformers' smart_resize and qwen_vl_utils' rounding for explicit
// sizes. The functions live in vision/smart_resize.ts because qwen_vl_utils' video-file sampling
// (vision/video_sampling.ts) sizes frames with them too.
export * from "../../vision/smart_resize.ts";
