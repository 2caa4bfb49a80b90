/* libfastvar.so: every symbol comes from the engine linked in whole
 * (fastvar_lib); cmake/fastvar.map keeps the C API (fastvar_*) visible and
 * hides the rest. This file only gives the library a source of its own. */
#include "fastvar/fastvar.h"
