"""Equivariant NNGP/NTK layers in neural-tangents' stax style."""
from raygram.kernels.groups import GROUP_NAMES, PlanarGroup, as_group, get_group, orbit, transform_images
from raygram.kernels.augmentation import augmented_kernel_fn
from raygram.kernels.planar import GroupConv, GroupPool, LiftingConv, transform_feature_maps
from raygram.kernels.serial import general_serial, serial
from raygram.kernels.so3 import S2Lifting, SO3Conv, SO3Pool
from raygram.kernels.so3_relative import so3_serial

__all__ = [
    # planar groups (groups.py)
    "GROUP_NAMES", "PlanarGroup", "get_group", "as_group", "orbit", "transform_images",
    # planar group layers (planar.py) and their fast serial (serial.py)
    "LiftingConv", "GroupConv", "GroupPool", "transform_feature_maps", "serial", "general_serial",
    # full data augmentation (augmentation.py)
    "augmented_kernel_fn",
    # SO(3) layers (so3.py) and their fast serial (so3_relative.py)
    "S2Lifting", "SO3Conv", "SO3Pool", "so3_serial",
]
