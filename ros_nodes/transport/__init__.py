"""Publish/subscribe ROS 2 topics from node code, over rclpy or over plain DDS without a ROS install."""

from ros_nodes.transport.base import (
    DEFAULT,
    SENSOR,
    Durability,
    MessageCallback,
    Publisher,
    QosProfile,
    Reliability,
    Subscription,
    Transport,
    make_transport,
    ros_typestore,
)

__all__ = [
    "DEFAULT",
    "SENSOR",
    "Durability",
    "MessageCallback",
    "Publisher",
    "QosProfile",
    "Reliability",
    "Subscription",
    "Transport",
    "make_transport",
    "ros_typestore",
]
