"""Launch the DreamVLA policy node on a robot: ``ros2 launch dream_policy policy.launch.py``.

The node runs a checkpoint against the topics of a contract (``configs/contract/*.yaml``; the
default, franka_hw.yaml, is an example to adapt to the cell). It is a lifecycle node: with
``autostart:=true`` (the default) launch configures it and, once it is inactive, activates it.

Arguments (``ros2 launch dream_policy policy.launch.py --show-args``):
  checkpoint    checkpoint directory (required)
  cache         DiT cache: auto (the checkpoint's cache_schedule.json if any), none, or a schedule
                JSON; default auto
  contract      contract YAML; default: the installed configs/contract/franka_hw.yaml
  node_name     node name; default dream_policy
  remappings    topic remappings "from:=to,from2:=to2"; default none
  use_sim_time  take time from /clock; default false
  autostart     configure and activate at start; default true
  transport     rclpy | dds | auto; default auto (rclpy when importable)

Only ``launch`` and ``launch_ros`` are imported, and only inside ``generate_launch_description``, so the
file can be parsed and exercised where ROS 2 is not installed (test/test_packaging.py).
"""

PACKAGE = 'dream_policy'
# lifecycle_msgs/msg/Transition ids, written out so that only launch and launch_ros are imported.
TRANSITION_CONFIGURE = 1
TRANSITION_ACTIVATE = 3
TRUE = ('true', '1', 'yes', 'on')


def generate_launch_description():
    """Declare the arguments; the node is built once they are known (OpaqueFunction)."""
    # launch.launch_description rather than the package's re-export: ruff counts a bare `launch` as this
    # repository's launch/ folder.
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description import LaunchDescription
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    contract = PathJoinSubstitution([FindPackageShare(PACKAGE), 'configs', 'contract', 'franka_hw.yaml'])
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', description='checkpoint directory of the policy'),
        DeclareLaunchArgument('cache', default_value='auto',
                              description="DiT cache: auto (the checkpoint's cache_schedule.json if any), "
                                          'none, or a cache schedule JSON'),
        DeclareLaunchArgument('contract', default_value=contract,
                              description='contract YAML: topics, QoS, alignment, safety limits'),
        DeclareLaunchArgument('node_name', default_value='dream_policy', description='node name'),
        DeclareLaunchArgument('remappings', default_value='',
                              description='topic remappings, "from:=to,from2:=to2"'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='take time from /clock (true|false)'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate the node at start (true|false)'),
        DeclareLaunchArgument('transport', default_value='auto',
                              description='rclpy | dds | auto (rclpy when it can be imported)'),
        OpaqueFunction(function=launch_setup),
    ])


def launch_setup(context):
    """Build the policy node (and its autostart events) from the resolved launch arguments."""
    checkpoint = argument(context, 'checkpoint')
    if not checkpoint:
        raise RuntimeError('policy.launch.py: checkpoint:=<checkpoint directory> is required')
    return policy_node_actions(context, ['--policy', 'checkpoint', '--ckpt', checkpoint,
                                         '--cache', argument(context, 'cache') or 'auto'])


def argument(context, name):
    """A launch argument's value as a string."""
    from launch.substitutions import LaunchConfiguration

    return LaunchConfiguration(name).perform(context).strip()


def flag(context, name):
    """A boolean launch argument."""
    value = argument(context, name).lower()
    if value not in TRUE + ('false', '0', 'no', 'off'):
        raise RuntimeError(f'{name}:={value} is not a boolean (true|false)')
    return value in TRUE


def parse_remappings(text):
    """``"from:=to,from2:=to2"`` -> ``[("from", "to"), ("from2", "to2")]``."""
    pairs = []
    for item in text.split(','):
        item = item.strip()
        if not item:
            continue
        source, sep, target = item.partition(':=')
        if not sep or not source.strip() or not target.strip():
            raise RuntimeError(f'remappings: {item!r} is not "from:=to"')
        pairs.append((source.strip(), target.strip()))
    return pairs


def policy_node_actions(context, policy_arguments, extra_arguments=()):
    """The policy node as a lifecycle node, and with autostart the configure/activate events.

    Shared with sim.launch.py (which loads this file), so both start the node the same way.
    """
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.events import matches_action
    from launch_ros.actions import LifecycleNode
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState

    node_name = argument(context, 'node_name')
    use_sim_time = flag(context, 'use_sim_time')
    # The node serves ~/change_state and starts unconfigured: launch (or `ros2 lifecycle set`) drives it.
    arguments = ['--contract', argument(context, 'contract'), *policy_arguments, *extra_arguments,
                 '--transport', argument(context, 'transport'), '--node-name', node_name, '--no-autostart',
                 '--use-sim-time' if use_sim_time else '--no-use-sim-time']
    node = LifecycleNode(
        package=PACKAGE,
        executable='policy_node',
        name=node_name,
        namespace='',
        arguments=arguments,
        remappings=parse_remappings(argument(context, 'remappings')),
        parameters=[{'use_sim_time': use_sim_time}],
        output='screen',
        emulate_tty=True,
    )
    actions = [node]
    if flag(context, 'autostart'):
        actions += [
            # inactive -> activate; registered before configure is requested.
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node,
                goal_state='inactive',
                entities=[EmitEvent(event=ChangeState(
                    lifecycle_node_matcher=matches_action(node),
                    transition_id=TRANSITION_ACTIVATE,
                ))],
            )),
            EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node),
                transition_id=TRANSITION_CONFIGURE,
            )),
        ]
    return actions
