"""Results: the result record, the table, the regression gate and the leaderboard; they read only records."""
