"""Callbacks: Keras' hook names, called by ``Sequential.fit``.

A callback subclasses :class:`Callback` and overrides the hooks it needs;
``fit`` sets ``callback.model`` before training. Setting
``model.stop_training = True`` from any hook stops after the current epoch.
A plain function ``f(model, epoch, logs)`` still works: it runs at the end of
every epoch, and returning True stops training.

Granularity of ``on_train_batch_end``: the native loop runs a part of an
epoch in one call, with no Python between its steps, and the hook runs
after each such call, with ``batch`` the index of the last step it made
(today one call per epoch, plus one for a last partial batch). A fit whose
callbacks have no batch hook pays nothing for them.
"""


class Callback:
    """Base class of the callbacks that ``Sequential.fit`` calls.

    Hooks (all optional; ``logs`` is a dict, never None):
    ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_epoch_begin(epoch, logs)``, ``on_epoch_end(epoch, logs)`` (logs: loss,
    accuracy, val_loss, val_accuracy, time of the epoch), and
    ``on_train_batch_end(batch, logs)`` (logs: the loss of that step).
    """

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class _Function(Callback):
    """A plain ``f(model, epoch, logs)``: runs at each epoch's end; True stops training."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, epoch, logs=None):
        if self.fn(self.model, epoch, logs):
            self.model.stop_training = True


class CallbackList:
    """The callbacks of one fit, called in the order given."""

    def __init__(self, callbacks, model):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback) or callable(callbacks) and not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError("callbacks must be a list of fastmlp.callbacks.Callback instances or of functions "
                            f"f(model, epoch, logs), got {type(callbacks).__name__}.")
        items = []
        for i, cb in enumerate(callbacks):
            if isinstance(cb, Callback):
                items.append(cb)
            elif callable(cb):
                items.append(_Function(cb))
            else:
                raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}: pass a fastmlp.callbacks.Callback "
                                "instance or a function f(model, epoch, logs).")
        for cb in items:
            cb.set_model(model)
        self.callbacks = items
        self.batch_hooks = [cb for cb in items
                            if type(cb).on_train_batch_end is not Callback.on_train_batch_end]

    def __bool__(self):
        return bool(self.callbacks)

    def on_train_begin(self, logs):
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs):
        for cb in self.batch_hooks:
            cb.on_train_batch_end(batch, logs)


from .checkpoints import BackupAndRestore, ModelCheckpoint  # noqa: E402  (they subclass Callback)
