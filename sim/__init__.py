"""MuJoCo re-creation of the CALVIN play-table: scene, physics, tasks, expert, evaluation."""
