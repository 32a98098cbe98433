// Everything mybag offers C++ programs: the functional form and the module.
#pragma once

#include "mybag/embedding_bag.h"  // IWYU pragma: export
#include "mybag/mode.h"           // IWYU pragma: export
#include "mybag/module.h"         // IWYU pragma: export
