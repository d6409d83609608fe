"""Other batching systems run side by side with phalanx on the same workloads (``--peers``).

Each peer runs in its own subprocess (``dynet_worker``): DyNet must be configured before it is
imported (memory, autobatch strategy) and can crash the process on some workloads, so a crash
becomes a row note instead of ending the benchmark."""
