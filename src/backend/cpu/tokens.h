// FastVAR's token ops on host memory: PTS scoring and top-K selection, gather,
// and CTR's restore. Plain kernels (the plan that decides when they run is in
// fastvar/plan.h); the CPU backend runs them, and they are the reference the
// other backends are tested against.
#pragma once

#include <cstdint>

#include "core/tap.h"  // ScoreMode

namespace fastvar {

// PTS. x: (R, h*w, C) residual stream of one scale. For each row, scores every
// token by the squared distance to the low-frequency estimate and writes the K
// best positions to keep (R, K) in descending score order (ties: lower index
// first). scores (R, h*w) may be null.
void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                float* scores);
// out (R, K, C) = x (R, L, C) gathered at keep.
void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out);
// CTR. out (R, h*w, C) = area-resize of cache (R, hc*wc, C) to h x w, with the K
// computed tokens y (R, K, C) scattered in at keep.
void restore_tokens(const float* cache, int hc, int wc, const float* y, const int32_t* keep, int R,
                    int K, int h, int w, int C, float* out);
// Area (adaptive-average) resize of a token-major map (h*w, C) -> (ho*wo, C).
void resize_area_tokens(const float* x, int h, int w, int C, float* y, int ho, int wo);

}  // namespace fastvar
