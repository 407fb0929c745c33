// Stands in for the CUDA (or C) header of this name: gpupool_emu.h provides its contents.
#include "../gpupool_emu.h"
