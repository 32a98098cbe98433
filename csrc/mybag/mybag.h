// Everything mybag offers C++ programs: the functional forms, the modules (the plain one, the one
// trained by its own backward and the row-wise quantized one) and the switch for the CUDA value
// checks.
#pragma once

#include "mybag/cuda_value_checks.h"        // IWYU pragma: export
#include "mybag/embedding_bag.h"            // IWYU pragma: export
#include "mybag/fused_embedding_bag.h"      // IWYU pragma: export
#include "mybag/fused_module.h"             // IWYU pragma: export
#include "mybag/mode.h"                     // IWYU pragma: export
#include "mybag/module.h"                   // IWYU pragma: export
#include "mybag/quantized_embedding_bag.h"  // IWYU pragma: export
#include "mybag/quantized_module.h"         // IWYU pragma: export
