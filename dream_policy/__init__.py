"""DreamVLA-style robot policy runtime: policy, CLI and the glue to the play-table sim and ROS 2."""

__version__ = "0.1.0"
