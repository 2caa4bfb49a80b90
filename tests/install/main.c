/* Generates one image with the embedded model through the installed C API
 * and checks that it is not blank. Exit 0 on success. */
#include <fastvar/fastvar.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  fastvar_engine* e = fastvar_load(NULL, NULL);
  if (!e) {
    fprintf(stderr, "load: %s\n", fastvar_last_error());
    return 1;
  }
  fastvar_params p = fastvar_params_default();
  p.class_id = 7;
  p.seed = 3;
  int w = 0, h = 0;
  if (fastvar_output_size(e, &p, &w, &h) != FASTVAR_OK) return 1;
  unsigned char* rgb = malloc((size_t)w * h * 3);
  if (fastvar_generate(e, &p, rgb, NULL, NULL) != FASTVAR_OK) {
    fprintf(stderr, "generate: %s\n", fastvar_last_error());
    return 1;
  }
  long sum = 0;
  for (int i = 0; i < w * h * 3; ++i) sum += rgb[i];
  printf("%dx%d image, mean %.1f\n", w, h, (double)sum / (w * h * 3));
  free(rgb);
  fastvar_free(e);
  return sum > 0 ? 0 : 1;
}
