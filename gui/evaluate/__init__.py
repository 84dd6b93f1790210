"""The Evaluate tab: metrics over a dataset, and the leaderboard."""
