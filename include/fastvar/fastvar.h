/* fastvar.cpp public API: load a VAR-family model once, generate many images.
 * Plain C so that it can be used from C, C++ and FFI bindings. Every function
 * that can fail returns a status and leaves a one-line message that
 * fastvar_last_error() returns (per thread). */
#ifndef FASTVAR_FASTVAR_H
#define FASTVAR_FASTVAR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fastvar_engine fastvar_engine;

typedef enum { FASTVAR_OK = 0, FASTVAR_ERROR = 1 } fastvar_status;

/* Generation settings. Fill with fastvar_params_default() then change fields. */
typedef struct {
  int num_images;          /* B >= 1 */
  const int* classes;      /* num_images class ids, or NULL to use `class_id` for all */
  int class_id;            /* used when classes == NULL */
  float cfg;               /* classifier-free guidance at the last scale (ramped from 0) */
  int top_k;               /* 0 = off */
  float top_p;             /* 0 = off */
  uint64_t seed;
  int threads;             /* 0 = all cores */
  /* FastVAR (training-free cached token pruning). */
  int fastvar;             /* 1 = on (the model's default plan unless overridden) */
  const char* prune;       /* "SCALE:RATIO,..." by scale index, NULL = default */
  int skip_last;           /* -1 = default, else number of final scales skipped */
  int cache_scale;         /* -1 = default */
  int prune_layer_begin;   /* -1 = default */
  int prune_layer_end;     /* -1 = default */
  const char* score;       /* "mean" (reference) or "box", NULL = "mean" */
} fastvar_params;

/* Progress: called after each scale, and once more for the tokenizer decoder
 * (scale == num_scales, side = image side). */
typedef struct {
  int scale, num_scales;
  int side_h, side_w;      /* token map (or image, for the decoder) */
  double ms;               /* wall time of this step */
  int skipped;             /* 1 for scales FastVAR skips entirely */
  int64_t tokens;          /* tokens of the scale, per image */
  int64_t forwarded;       /* token-branch passes computed (all blocks, rows, branches) */
  int64_t kv_bytes;        /* KV cache in use after the scale */
  double gflop;            /* analytic floating-point work of the step */
} fastvar_scale_info;

typedef void (*fastvar_progress_fn)(const fastvar_scale_info* info, void* user);

fastvar_params fastvar_params_default(void);

/* Loads a VAR transformer and its VQVAE (.pth or .safetensors). NULL on error. */
fastvar_engine* fastvar_load(const char* model_path, const char* vae_path);
void fastvar_free(fastvar_engine* e);

/* Image geometry and model facts. */
int fastvar_image_width(const fastvar_engine* e);
int fastvar_image_height(const fastvar_engine* e);
int fastvar_num_classes(const fastvar_engine* e);
/* A one-line description of the loaded model (owned by the engine). */
const char* fastvar_describe(const fastvar_engine* e);

/* Checks every field of p against the loaded model (classes, ranges, the
 * FastVAR plan) without generating anything. */
fastvar_status fastvar_check_params(const fastvar_engine* e, const fastvar_params* p);

/* Generates p->num_images RGB8 images into rgb (num_images * H * W * 3 bytes,
 * interleaved, image after image). Same seed and settings give the same bytes,
 * whatever the thread count. */
fastvar_status fastvar_generate(fastvar_engine* e, const fastvar_params* p, uint8_t* rgb,
                                fastvar_progress_fn progress, void* user);

/* Message of the last failure on this thread ("" if none). */
const char* fastvar_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* FASTVAR_FASTVAR_H */
