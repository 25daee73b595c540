"""What a job is, with no I/O: the JobSpec, the pod contract (paths, labels, environment,
exit codes), HCCL rank tables and the Kubernetes name syntax."""
