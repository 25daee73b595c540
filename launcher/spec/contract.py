"""The contract between rendered manifests, the in-pod bootstrap, the local backend and
the images: paths, labels, annotations, environment variables and exit codes. Import
these names rather than repeating the strings."""

# ------------------------------------------------------------------ in-pod contract
CONFIG_DIR = "/etc/leo-launch"  # the job's ConfigMap is mounted here (read-only)
JOB_FILE = "job.yaml"  # JobSpec.to_dict() as YAML
EXPERIMENT_FILE = "experiment.yaml"  # the resolved ExperimentConfig.to_dict() as YAML
RANK_TABLE_FILE = "hccl.json"  # FILE rank-table mode: the full HCCL table
JOB_PATH = f"{CONFIG_DIR}/{JOB_FILE}"
EXPERIMENT_PATH = f"{CONFIG_DIR}/{EXPERIMENT_FILE}"
FILE_RANK_TABLE_PATH = f"{CONFIG_DIR}/{RANK_TABLE_FILE}"
CONTROLLER_RANK_TABLE_DIR = "/user/serverid/devindex/config"  # rings-config-<job> mount
CONTROLLER_RANK_TABLE_PATH = f"{CONTROLLER_RANK_TABLE_DIR}/{RANK_TABLE_FILE}"
DYNAMIC_RANK_TABLE_PATH = "/tmp/leo-launch/hccl.json"  # written by the bootstrap
CACHE_DIR = "/cache"  # data staged from data_url, once per node
SHM_DIR = "/dev/shm"  # memory-backed emptyDir
ASCEND_DRIVER_DIR = "/usr/local/Ascend/driver"  # host driver, mounted read-only
BOOTSTRAP_COMMAND = ("python", "-m", "launcher.bootstrap")
CONTAINER_NAME = "leo"
VOLCANO_TASK = "worker"
# AscendJob (MindCluster's ascend-operator): it injects its variables only into a container
# of this name, and names pods <job>-scheduler-0 and <job>-worker-<i>
ASCENDJOB_CONTAINER = "ascend"
ASCENDJOB_SCHEDULER = "scheduler"
ASCENDJOB_WORKER = "worker"
ASCENDJOB_PORT_NAME = "ascendjob-port"  # the operator reads MS_SCHED_PORT from this port

# Bootstrap exit codes, used by the Job's podFailurePolicy and Volcano's policies.
EXIT_SUCCESS = 0
EXIT_BAD_CONFIG = 2  # bad configuration: retrying cannot help, fail the whole job
NON_RETRIABLE_EXIT_CODES = (EXIT_BAD_CONFIG,)  # any other non-zero code is retriable
EXIT_RETRIABLE = 1
EXIT_TERMINATED = 143  # stopped by SIGTERM, after a last publication

# ------------------------------------------------------------------ labels, annotations
APP_NAME = "leo"
MANAGER = "leo-launch"
LABEL_APP = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "leo-launch/job"
LABEL_EXPERIMENT = "leo-launch/experiment"
LABEL_ACCEL = "leo-launch/accel"
LABEL_SWEEP = "leo-launch/sweep"  # the sweep a trial belongs to (leo-launch sweep)
ANNOTATION_CARDS = "leo-launch/cards"
ANNOTATION_NODES = "leo-launch/nodes"
ANNOTATION_SCHEDULER = "leo-launch/scheduler"
ANNOTATION_RANK_TABLE = "leo-launch/rank-table"
ASCEND_DEVICE_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
ASCEND_RESOURCE_ANNOTATION = "huawei.com/Ascend910"
JOB_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RINGS_CONFIG_LABEL = ("ring-controller.atlas", "ascend-910")
ASCENDJOB_FRAMEWORK_LABEL = ("framework", "mindspore")  # selects the operator's MindSpore roles
ASCENDJOB_PRODUCT_LABEL = ("ring-controller.atlas", "ascend-910b")
LABEL_ROLE = "leo-launch/role"  # AscendJob pods: scheduler | worker
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# ------------------------------------------------------------------ pod environment
ENV_JOB_NAME = "LEO_JOB_NAME"
ENV_NAMESPACE = "LEO_NAMESPACE"
ENV_CONFIG_DIR = "LEO_CONFIG_DIR"
ENV_ACCELERATOR = "LEO_ACCELERATOR"
ENV_NODE_RANK = "LEO_NODE_RANK"
ENV_NODES = "LEO_NODES"
ENV_WORLD_SIZE = "LEO_WORLD_SIZE"
ENV_CARDS_PER_NODE = "LEO_CARDS_PER_NODE"
ENV_MASTER_ADDR = "LEO_MASTER_ADDR"
ENV_MASTER_PORT = "LEO_MASTER_PORT"
ENV_CLUSTER_TIMEOUT = "LEO_CLUSTER_TIMEOUT"
ENV_RANK_TABLE_MODE = "LEO_RANK_TABLE_MODE"
ENV_RANKTABLE_PORT = "LEO_RANKTABLE_PORT"
ENV_ASCEND_DEVICES = "LEO_ASCEND_DEVICES"  # the device-plugin annotation (JSON)
ENV_CACHE_DIR = "LEO_CACHE_DIR"
ENV_DATA_URL = "LEO_DATA_URL"
ENV_TRAIN_URL = "LEO_TRAIN_URL"
# where the bootstrap writes its one-line failure reason (the pod's termination message)
ENV_TERMINATION_LOG = "LEO_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
# The node rank is the first of these that is set: our downward-API variable
# (batch/v1 Job), the Job controller's own, then Volcano's env plugin.
# The ascend-operator's MS_NODE_RANK comes last (worker pods from 0: our Scheduler has no NPUs).
NODE_RANK_ENV_VARS = (ENV_NODE_RANK, "JOB_COMPLETION_INDEX", "VC_TASK_INDEX", "MS_NODE_RANK")
# What the ascend-operator injects into the `ascend` container (env mode)
OPERATOR_ROLE = "MS_ROLE"  # MS_SCHED on the Scheduler pod, MS_WORKER on Worker pods
OPERATOR_SCHED_HOST = "MS_SCHED_HOST"
OPERATOR_SCHED_PORT = "MS_SCHED_PORT"
OPERATOR_WORKER_NUM = "MS_WORKER_NUM"
OPERATOR_LOCAL_WORKER = "MS_LOCAL_WORKER"
OPERATOR_NODE_RANK = "MS_NODE_RANK"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # keys of --storage-secret

# Variables of the bootstrap on this machine (the local backend sets them; pods need none).
ENV_WORK_DIR = "LEO_WORK_DIR"
ENV_PUBLISH_INTERVAL = "LEO_PUBLISH_INTERVAL"
ENV_EVAL_TASKS = "LEO_EVAL_TASKS"
ENV_STATUS_FILE = "LEO_STATUS_FILE"
ENV_PROCESS_MARK = "LEO_BOOTSTRAP_MARK"  # carried by msrun, its workers and the evaluation
ENV_LOCAL_JOB = "LEO_LOCAL_JOB"  # <name>:<token>, on every process of a local job
