"""Running `smtpy serve`: listeners, the daemon, the supervisor of processes and its watcher."""
