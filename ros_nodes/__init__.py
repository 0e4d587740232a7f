"""ROS 2 nodes that serve the policy; empty until the ROS milestone."""
