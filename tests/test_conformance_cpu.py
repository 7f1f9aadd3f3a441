"""Every registry op, on contiguous and non-contiguous inputs, against its float64 reference."""
import pytest

import minigraph as mg
from minigraph.core.cases import CASES
from minigraph.tools.conformance import check_case
from minigraph.core.registry import OPS

CPU = mg.backend_cpu_init(2)


def test_every_op_has_cases():
    covered = {c.op for c in CASES}
    missing = sorted(name for name, op in OPS.items() if not op.is_view and name not in covered)
    assert not missing, f"ops without conformance cases: {missing}"


def test_every_op_has_a_cpu_kernel():
    missing = sorted(n for n, op in OPS.items() if not op.is_view and not CPU.supports_op_name(n))
    assert not missing, f"ops without CPU kernels: {missing}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cpu_matches_reference(case):
    err = check_case(case, CPU, seed=1)
    assert err is None, f"{case.name}: {err}"
