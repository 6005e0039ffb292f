"""The API front: a process apart from the job runtime that answers circuit submits itself.

With ``QMESH_API_FRONT=true`` the coordinator runs as two processes. The front listens on the
public port: it validates a circuit submit, appends the job to its fsync'd intake journal and
answers 202, without waiting on the job runtime's event loop or its database writer. Every
other request it forwards, unchanged, to the runtime process (the whole API, the scheduler,
the libp2p host and the embedded nodes) over a Unix socket. See docs/operations.md, "The API
front".
"""
