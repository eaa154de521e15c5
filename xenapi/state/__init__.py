"""The store and its views: records, events, expressions, tasks, sessions, operation tables."""
