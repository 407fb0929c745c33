// Stands in for CUDA's <cooperative_groups/reduce.h>: cooperative_groups.h has cg::reduce.
#include "../cooperative_groups.h"
