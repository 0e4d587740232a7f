"""Launch the play-table sim node and the policy node: ``ros2 launch dream_policy sim.launch.py``.

The sim node publishes the MuJoCo CALVIN play-table on the topics of a contract (default: the installed
configs/contract/playtable.yaml) and the simulated time on /clock; the policy node (a lifecycle node,
started as in policy.launch.py) drives it with the scripted expert or a checkpoint.

Arguments (``ros2 launch dream_policy sim.launch.py --show-args``), those of policy.launch.py and:
  policy        expert | checkpoint; default expert
  checkpoint    checkpoint directory (needed with policy:=checkpoint)
  cache         its DiT cache: auto | none | a schedule JSON; default auto
  scene         CALVIN scene A | B | C | D; default D
  use_sim_time  here true by default: the policy node follows the sim's /clock

Only ``launch`` and ``launch_ros`` are imported, and only inside ``generate_launch_description``, so the
file can be parsed and exercised where ROS 2 is not installed (test/test_packaging.py).
"""

PACKAGE = 'dream_policy'
POLICIES = ('expert', 'checkpoint')
SCENES = ('A', 'B', 'C', 'D')


def generate_launch_description():
    """Declare the arguments; the nodes are built once they are known (OpaqueFunction)."""
    # launch.launch_description rather than the package's re-export: ruff counts a bare `launch` as this
    # repository's launch/ folder.
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description import LaunchDescription
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    contract = PathJoinSubstitution([FindPackageShare(PACKAGE), 'configs', 'contract', 'playtable.yaml'])
    return LaunchDescription([
        DeclareLaunchArgument('policy', default_value='expert', choices=list(POLICIES),
                              description='expert (scripted, needs no checkpoint) or checkpoint'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='checkpoint directory (with policy:=checkpoint)'),
        DeclareLaunchArgument('cache', default_value='auto',
                              description="the checkpoint's DiT cache: auto (its cache_schedule.json "
                                          'if any), none, or a cache schedule JSON'),
        DeclareLaunchArgument('scene', default_value='D', choices=list(SCENES),
                              description='CALVIN scene variant'),
        DeclareLaunchArgument('contract', default_value=contract,
                              description='contract YAML shared by both nodes'),
        DeclareLaunchArgument('node_name', default_value='dream_policy',
                              description='name of the policy node'),
        DeclareLaunchArgument('remappings', default_value='',
                              description='topic remappings of the policy node, "from:=to,from2:=to2"'),
        DeclareLaunchArgument('use_sim_time', default_value='true',
                              description="the policy node takes time from the sim's /clock (true|false)"),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate the policy node at start (true|false)'),
        DeclareLaunchArgument('transport', default_value='auto',
                              description='rclpy | dds | auto (rclpy when it can be imported)'),
        OpaqueFunction(function=launch_setup),
    ])


def launch_setup(context):
    """Build the sim node and the policy node from the resolved launch arguments."""
    from launch_ros.actions import Node

    policy_launch = load_policy_launch()
    policy = policy_launch.argument(context, 'policy')
    checkpoint = policy_launch.argument(context, 'checkpoint')
    scene = policy_launch.argument(context, 'scene')
    if policy not in POLICIES:
        raise RuntimeError(f'policy:={policy}: expected one of {", ".join(POLICIES)}')
    if policy == 'checkpoint' and not checkpoint:
        raise RuntimeError('sim.launch.py: policy:=checkpoint needs checkpoint:=<checkpoint directory>')
    cache = policy_launch.argument(context, 'cache') or 'auto'
    policy_arguments = ['--policy', policy,
                        *(['--ckpt', checkpoint, '--cache', cache] if policy == 'checkpoint' else [])]
    sim = Node(
        package=PACKAGE,
        executable='sim_node',
        name='sim_node',
        arguments=['--contract', policy_launch.argument(context, 'contract'), '--scene', scene,
                   '--transport', policy_launch.argument(context, 'transport'), '--node-name', 'sim_node'],
        output='screen',
        emulate_tty=True,
    )
    return [sim, *policy_launch.policy_node_actions(context, policy_arguments, ['--scene', scene])]


def load_policy_launch():
    """policy.launch.py, next to this file (installed together in share/dream_policy/launch)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().with_name('policy.launch.py')
    spec = importlib.util.spec_from_file_location('dream_policy_policy_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
