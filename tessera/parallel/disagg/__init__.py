"""Disaggregated attention and experts (MegaScale-Infer, arXiv 2504.02263): the ping-pong pipeline's
discrete-event simulator (`pingpong.py`), the deployment planner of the paper's Algorithm 1
(`planner.py`) and hot-expert replication (`replication.py`). Pure Python: nothing here imports the
engine or the command line, and nothing needs torch."""
