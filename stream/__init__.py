"""btomo.stream: everything that moves frames.

Sources (the simulator, and later ZeroMQ ingest and replay), the recording format, the pipeline
runner and its stages, the dashboard, the configuration and the command line. ``stream`` may use
the three other rooms; nothing imports ``stream`` except the CLI.
"""
