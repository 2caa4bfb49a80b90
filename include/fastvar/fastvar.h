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

typedef enum { FASTVAR_OK = 0, FASTVAR_ERROR = 1, FASTVAR_ABORTED = 2 } fastvar_status;

/* Generation settings. Fill with fastvar_params_default() then change fields. */
typedef struct {
  int num_images;          /* B >= 1 */
  /* Class-conditional models (VAR). */
  const int* classes;      /* num_images class ids, or NULL to use `class_id` for all */
  int class_id;            /* used when classes == NULL */
  /* Text-to-image models (Infinity, HART). */
  const char* const* prompts; /* num_images prompts, or NULL to use `prompt` for all */
  const char* prompt;
  float h_div_w;           /* aspect ratio height / width (nearest template), 0 = 1:1 */
  const char* resolution;  /* "0.06M", "0.25M", "0.60M", "1M" (default) or "2K" */
  float tau;               /* sampling temperature, < 0 = model default (0.5) */
  int no_smooth;           /* HART: 1 = plain sampling instead of the official more_smooth
                            * Gumbel-softmax codebook mixture */
  /* Sampling. */
  float cfg;               /* guidance: VAR and HART ramp 0 -> cfg over the scales; Infinity uses it
                            * at every scale; < 0 = model default (VAR, Infinity 4; HART 4.5) */
  int top_k;               /* 0 = off, < 0 = model default (VAR, Infinity 900; HART 600 before
                            * scale 7, 300 from it) */
  float top_p;             /* 0 = off, < 0 = model default (VAR 0.96, Infinity 0.97, HART off) */
  uint64_t seed;           /* image i uses seed + i (unless `seeds` is given) */
  const uint64_t* seeds;   /* num_images per-image seeds, or NULL. Every random number of an
                            * image comes from its seed alone (with batch_invariant, an image
                            * is byte-identical whether generated alone or inside any batch). */
  int threads;             /* 0 = all cores */
  /* FastVAR (training-free cached token pruning). */
  int fastvar;             /* 1 = on (the model's default plan unless overridden) */
  const char* prune;       /* "SCALE:RATIO,..." by scale index, NULL = default */
  int skip_last;           /* -1 = default, else number of final scales skipped */
  int cache_scale;         /* -1 = default */
  int prune_layer_begin;   /* -1 = default */
  int prune_layer_end;     /* -1 = default */
  const char* score;       /* "mean" (reference) or "box", NULL = "mean" */
  /* Compute dtype of the transformer GEMMs: "fp32" (NULL), "bf16" (bfloat16
   * operands, float32 accumulation; needs AVX512_BF16 or AMX) or, on the CPU,
   * "int8" (weights quantised per output channel, activations per row, int32
   * accumulation). The engine prepacks bf16 / int8 weights on the first call
   * that asks for them. */
  const char* dtype;
  /* Where to run: "cpu" (NULL) or "cuda" / "cuda:N" (builds with the CUDA
   * backend; VAR and Infinity models, the T5 text encoder stays on the CPU).
   * On CUDA, dtype NULL means "bf16"; the device copy of the weights is made
   * on the first call and kept for the next ones. */
  const char* device;
  /* Abort hook, polled after every scale: returning non-zero stops the
   * generation, and fastvar_generate returns FASTVAR_ABORTED. NULL = never. */
  int (*abort)(void* user);
  void* abort_user;
  /* 1 = every image byte-identical to the same image generated alone (same
   * seed and settings), whatever else is in the batch: the products run per
   * image instead of over the whole batch, which costs some of the batch's
   * speed on the small scales. 0 = one product over the batch (images of a
   * batch may differ from their solo runs in the last bits of the floats,
   * and so, rarely, in a sampled token). */
  int batch_invariant;
  /* The KV cache and FastVAR's caches: "fp32" (NULL; the bf16 engine on CUDA
   * keeps them in bfloat16 anyway) or "bf16" on the CPU whatever the dtype:
   * half their bytes (the attention widens them block by block), for the
   * large resolutions. */
  const char* kv_dtype;
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

/* Loads a class-conditional VAR transformer and its VQVAE (.pth or
 * .safetensors). NULL on error. With both paths NULL it loads the default
 * model compiled into the library (the Fashion-MNIST VAR, 10 classes, 32x32);
 * builds made without models/fmnist_var.safetensors fail with "no embedded
 * model in this build; pass -m and --vae". */
fastvar_engine* fastvar_load(const char* model_path, const char* vae_path);
/* Loads any architecture the engine knows (VAR, Infinity, HART), detected
 * from the transformer file's tensors (for HART: the hart-0.7b-1024px folder
 * or its llm/ subfolder; the tokenizer is then found beside it and vae_path
 * may be NULL): the transformer, its VAE and, for text-to-image models, the
 * text encoder's Hugging Face folder (T5 for Infinity, Qwen2 for HART; may be
 * NULL: prompts then fail). All three NULL: the embedded model. NULL on error,
 * with a message naming what the files are and what is missing. */
fastvar_engine* fastvar_load_auto(const char* model_path, const char* vae_path, const char* text_encoder_dir);
/* Loads a text-to-image Infinity transformer, its BSQ VAE and a Hugging Face
 * T5 encoder folder (config.json, spiece.model, weights). NULL on error. */
fastvar_engine* fastvar_load_t2i(const char* model_path, const char* vae_path, const char* t5_dir);
/* 1 for text-to-image engines (prompts), 0 for class-conditional ones. */
int fastvar_is_text_to_image(const fastvar_engine* e);
void fastvar_free(fastvar_engine* e);

/* Size of the images fastvar_generate makes with these params. */
fastvar_status fastvar_output_size(const fastvar_engine* e, const fastvar_params* p, int* width,
                                   int* height);
int fastvar_num_classes(const fastvar_engine* e);
/* Name of a class ("Sneaker") from the model file's class_names metadata, or
 * NULL when the model has none or class_id is out of range (owned by the engine). */
const char* fastvar_class_name(const fastvar_engine* e, int class_id);
/* A one-line description of the loaded model (owned by the engine). */
const char* fastvar_describe(const fastvar_engine* e);

/* Checks every field of p against the loaded model (classes, ranges, the
 * FastVAR plan) without generating anything. */
fastvar_status fastvar_check_params(const fastvar_engine* e, const fastvar_params* p);

/* Generates p->num_images RGB8 images into rgb (num_images * width * height * 3 bytes,
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
