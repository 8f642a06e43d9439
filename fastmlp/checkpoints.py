"""ModelCheckpoint and BackupAndRestore: model files written while a model trains.

Both are :class:`fastmlp.callbacks.Callback` subclasses (``fit(callbacks=[...])``; also
``fastmlp.callbacks.ModelCheckpoint`` / ``BackupAndRestore``), with epochs numbered from 0 as
Keras numbers them. Every file is written as
``model.save`` writes it (atomically), so a crash mid-save leaves the last one whole.
"""
import math
import os
import warnings

from .callbacks import Callback


class ModelCheckpoint(Callback):
    """Save the model at the end of every epoch, or only when ``monitor`` improves.

    Parameters
    ----------
    filepath : str or os.PathLike
        May contain ``{epoch}`` (1-based, as Keras) and the names of the epoch's logs, e.g.
        ``"ckpt-{epoch:03d}-{val_loss:.3f}.safetensors"``.
    monitor : str
        The log to watch with ``save_best_only``: "loss", "val_loss", "accuracy", ...
    save_best_only : bool
        Save only when ``monitor`` is better than at every earlier save.
    mode : {"auto", "min", "max"}
        Which way is better; "auto" is "max" for accuracies, "min" otherwise.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto"):
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"filepath must be a str or os.PathLike, got {type(filepath).__name__}.")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a log such as 'val_loss', got {monitor!r}.")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
        if not isinstance(save_best_only, bool):
            raise ValueError(f"save_best_only must be True or False, got {save_best_only!r}.")
        self.filepath, self.monitor, self.save_best_only = os.fspath(filepath), monitor, save_best_only
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.best = -math.inf if self.mode == "max" else math.inf
        try:
            self.filepath.format(epoch=1)
        except KeyError:
            pass  # a log's name: known at the end of an epoch
        except (IndexError, ValueError) as exc:
            raise ValueError(f"filepath {self.filepath!r} is not a valid format string: {exc}.") from None

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            raise ValueError(f"filepath {self.filepath!r} names {exc}, which is not among this epoch's logs "
                             f"({', '.join(sorted(logs)) or 'none'}).") from None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"ModelCheckpoint monitors {self.monitor!r}, which is not among the logs "
                              f"({', '.join(sorted(logs)) or 'none'}); nothing was saved.", stacklevel=2)
                return
            better = current > self.best if self.mode == "max" else current < self.best
            if not better:
                return
            self.best = current
        self.model.save(self._path(epoch, logs))


class BackupAndRestore(Callback):
    """Keras' BackupAndRestore: a fit that was killed resumes from its last completed epoch
    when the same script runs again; the backup is deleted when training ends normally.

    At the end of every epoch the model (weights, optimizer state and step counter, random
    generator, history) is written to ``backup_dir/backup.safetensors``. ``on_train_begin``
    restores that state into ``self.model`` when the file is there, and sets
    :attr:`initial_epoch` to the first epoch still to run (0 when there is no backup); ``fit``
    goes on from that epoch.

    Parameters
    ----------
    backup_dir : str or os.PathLike
        The folder of the backup file (created if missing).
    """

    FILE = "backup.safetensors"

    def __init__(self, backup_dir):
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(f"backup_dir must be a folder path, got {backup_dir!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.initial_epoch = 0

    @property
    def path(self):
        return os.path.join(self.backup_dir, self.FILE)

    def on_train_begin(self, logs=None):
        from .saving import build_sequential, read_document, sequential_state

        self.initial_epoch = 0
        if not os.path.exists(self.path):
            return
        doc, tensors = read_document(self.path)
        epoch = doc.get("extra", {}).get("backup_epoch")
        if doc.get("kind") != "Sequential" or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"{self.path} is not a backup of a Sequential written by BackupAndRestore; "
                             "delete it or choose another backup_dir.")
        saved = build_sequential(doc["model"], tensors)
        model = self.model
        mine = sequential_state(model, include_optimizer=False)[0]
        for key in ("layers", "dtype"):
            if doc["model"][key] != mine[key]:
                raise ValueError(f"The backup in {self.path} is of another model (its {key} differ from this "
                                 "model's); delete it or choose another backup_dir.")
        if saved.optimizer is None or model.optimizer is None or type(saved.optimizer) is not type(model.optimizer):
            raise ValueError(f"The backup in {self.path} was made with another optimizer; delete it or choose "
                             "another backup_dir.")
        if not model.built:
            model.build(saved.input_dim)
        model.set_weights(saved.get_weights())
        opt = model.optimizer
        if saved.optimizer.state is None:
            opt.state = None
        else:
            opt.init_state(model._params.size, model.dtype)
            for name, vec in saved.optimizer.state.items():
                opt.state[name][...] = vec
        opt.t = saved.optimizer.t
        model._rng = saved._rng
        model._epochs_done = saved._epochs_done
        if hasattr(saved, "history"):
            model.history = saved.history
        self.initial_epoch = epoch + 1
        model._initial_epoch = self.initial_epoch  # fit goes on from there, as Keras' fit does

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        from .saving import save_model

        save_model(self.model, self.path, include_optimizer=True, extra={"backup_epoch": int(epoch)})

    def on_train_end(self, logs=None):
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
