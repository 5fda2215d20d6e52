"""``--method exact`` and proofs: piecewise-linear chains decided and sampled exactly.

:mod:`.program` writes a chain as a mixed-integer program, :mod:`.branch` decides it by branch
and bound over activation splits, :mod:`.polytope` samples an activation pattern's polytope,
:mod:`.certificate` proves targets unreachable on smooth chains by relaxation, :mod:`.analysis`
runs all of it once per run, and :mod:`.solver` is the registered solver. The bounds all of them
start from (intervals from the box, lines around activations, back-substitution) are
:mod:`onnxinv.partition.bounds`, which the backward pass shares.
"""
