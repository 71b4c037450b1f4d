"""Equivariant NNGP/NTK layers in neural-tangents' stax style."""
from .groups import GROUP_NAMES, PlanarGroup, get_group, orbit, transform_images
from .augmentation import augmented_kernel_fn
from .planar import GroupConv, GroupPool, LiftingConv, transform_feature_maps
from .serial import serial
from .so3 import S2Lifting, SO3Conv, SO3Pool
from .so3_relative import so3_serial

__all__ = [
    "GROUP_NAMES", "PlanarGroup", "get_group", "orbit", "transform_images",
    "LiftingConv", "GroupConv", "GroupPool", "transform_feature_maps",
    "augmented_kernel_fn", "serial", "S2Lifting", "SO3Conv", "SO3Pool",
    "so3_serial",
]
