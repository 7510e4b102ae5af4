"""regbench: a reproducible benchmark of deep deformable medical image registration.

Conventions (stated once, tested in tests/test_spatial.py):

* Tensors are channels-first: images ``(B, C, *spatial)`` with ``spatial`` = ``(H, W)`` or ``(D, H, W)``.
* A displacement field (DDF) has shape ``(B, ndim, *spatial)``; channel ``i`` is the displacement along
  array axis ``i``, in voxels of the fixed grid.
* Warping pulls back: ``warped(x) = moving(x + u(x))`` with ``u`` defined on the fixed grid.
"""

__version__ = "0.1.0"
