"""The byte model: the least memory traffic a case needs, whatever the kernel.

Forward:
    rows gathered    used entries (not padding_idx) x D x itemsize
    output written   bags x D x itemsize
    indices read     input and offsets (x their itemsize), and per_sample_weights if given

Forward + backward adds:
    gradient read    bags x D x itemsize (grad_output)
    dense gradient   rows x D x itemsize written: the whole table-sized gradient, zeros
                     included, must be written once; scattering into it is not counted again
    sparse gradient  used entries x D x itemsize values + used entries x 8 index bytes written

It is a floor, not a count of what any kernel does (a kernel that reads a hot row twice, or
spills a partial sum, moves more). Cache reuse works the other way: a row read twice from
cache costs less than the model says, so GB/s above the copy ceiling is possible for small
tables and skewed indices. The ratio of GB/s between torch and mybag is the speed-up whatever
the model, since both use the same bytes.
"""

from __future__ import annotations

from mybag.bench.grid import Case
from mybag.bench.inputs import Inputs


def gathered_bytes(inputs: Inputs) -> int:
    """Bytes of the table rows a case reads: used entries x D x itemsize."""
    weight = inputs.weight
    return inputs.used_entries.numel() * weight.shape[1] * weight.element_size()


def case_bytes(case: Case, inputs: Inputs) -> int:
    """The least bytes one call of the case must move (see the module's docstring)."""
    weight = inputs.weight
    row_bytes = weight.shape[1] * weight.element_size()
    total = gathered_bytes(inputs)
    total += case.bags * row_bytes
    total += inputs.input.numel() * inputs.input.element_size()
    total += inputs.offsets.numel() * inputs.offsets.element_size()
    if inputs.per_sample_weights is not None:
        total += inputs.per_sample_weights.numel() * inputs.per_sample_weights.element_size()
    if case.pass_ != "fwd":
        total += case.bags * row_bytes
        if case.pass_ == "fwd+bwd dense":
            total += case.rows * row_bytes
        else:
            total += inputs.used_entries.numel() * (row_bytes + 8)
    return total
