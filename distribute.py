"""tf.distribute for train.py: the strategy --strategy names, who writes, how a batch is split.

Every replica trains its own rows of the global batch, the same rows at every step, so the
LSTM state a replica carries belongs to its own streams. Under multi_worker only the chief
writes the run directory and TensorBoard logs; the other workers save their (identical)
checkpoints to a temporary directory, as TensorFlow's multi-worker guide prescribes, since
saving takes part in collective operations every worker must join.
"""

import shutil
import tempfile

import tensorflow as tf

import read_utils


def make_strategy(name, tpu="", cpu_devices=1):
    """The tf.distribute strategy called name; it must come before any other TensorFlow work.

    cpu_devices > 1 splits the CPU into that many logical devices, so `mirrored` can be tried
    (and tested) without GPUs. tpu is the TPU's name or grpc:// address ("" finds a local one).
    """
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if not resolver.cluster_spec().jobs:
            raise read_utils.InputError(
                "--strategy multi_worker needs the cluster in the TF_CONFIG environment variable, e.g. "
                'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
            )
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise read_utils.InputError(
            f"--strategy tpu found no TPU ({str(e).strip().splitlines()[0][:200]}); run on a TPU VM or "
            "pass its name or address with --tpu"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True for the one process that writes: always, except on non-chief multi-worker tasks."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def scratch_dir(strategy):
    """A temporary directory for what a non-chief worker must write but nobody keeps."""
    return tempfile.mkdtemp(prefix=f"charrnn_worker{strategy.cluster_resolver.task_id}_")


def remove_scratch(directory):
    shutil.rmtree(directory, ignore_errors=True)


def split_batch(strategy, batch):
    """Per-replica rows of a global batch (a tensor or a list of them): replica r gets rows
    r*b .. (r+1)*b - 1, b being the global batch over the number of replicas."""
    if isinstance(batch, (list, tuple)):
        return [split_batch(strategy, part) for part in batch]
    rows = batch.shape[0] // strategy.num_replicas_in_sync

    def replica_rows(context):
        first = context.replica_id_in_sync_group * rows
        return batch[first : first + rows]

    return strategy.experimental_distribute_values_from_function(replica_rows)


def join_batch(strategy, per_replica):
    """The global batch again from per-replica rows (a list of values); every worker must call it."""
    return [strategy.gather(value, axis=0) for value in per_replica]
