"""placeholder"""
from minigraph.backends.cuda.common import SIM


def refusal(node):
    return "the simulator runs no CUDA C++" if SIM else "not built yet"


def launches(node, work):
    raise NotImplementedError
