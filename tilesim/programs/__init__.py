"""The compiler: model specs -> op graph -> tiling -> tile programs."""
