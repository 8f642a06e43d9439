"""SearchResult: the table of trials, the best parameters and model, a plot; and the progress bar."""
import sys

from ._space import NAMES

_COLUMNS = ("trial", *NAMES, "n_params", "metric", "epochs", "seconds", "status", "error", "attempts", "finished", "pid")


class SearchResult:
    """What :func:`fastmlp.search.run` returns.

    Attributes
    ----------
    trials : pandas.DataFrame
        One row per trial, in trial order: its parameters (``widths`` a tuple
        of ``depth`` ints), ``n_params``, ``metric`` (the value of
        ``metric_name`` after its last epoch), ``epochs`` trained, ``seconds``,
        ``status`` ("ok"; "stopped": cut short by the time budget; "failed"),
        ``error``, ``attempts`` (2 when its worker died once), ``finished``
        (seconds from the start of the search), ``pid`` (the process that trained it); ``rung`` for halving,
        ``parent`` for evolution.
    best_params : dict
    best_trial : dict, the best trial's row
    best_model : fastmlp.Sequential, trained
    best_metric : float
    interrupted : bool
        True when Ctrl-C stopped the search (the trials done so far are here).
    metric_name, maximize, strategy : the search's settings
    seconds : float, the search's wall time

    Parameters
    ----------
    records : dict of int to dict
        The trials' records by id (built by :func:`fastmlp.search.run`, not by users).
    metric_name : str
    maximize : bool
    best_id : int or None
    best_model : fastmlp.Sequential or None
    interrupted : bool
    strategy : str
    seconds : float
    """

    def __init__(self, records, metric_name, maximize, best_id, best_model, interrupted, strategy, seconds):
        self._records = [records[k] for k in sorted(records)]
        self.metric_name, self.maximize = metric_name, maximize
        self._best_id, self.best_model = best_id, best_model
        self.interrupted, self.strategy, self.seconds = interrupted, strategy, seconds
        self._frame = None

    @property
    def trials(self):
        if self._frame is None:
            import pandas as pd

            extra = [c for c in ("rung", "parent") if any(c in r for r in self._records)]
            self._frame = pd.DataFrame([{c: r.get(c) for c in (*_COLUMNS, *extra)} for r in self._records],
                                       columns=[*_COLUMNS, *extra])
        return self._frame

    @property
    def best_params(self):
        if self._best_id is None:
            return None
        rec = next(r for r in self._records if r["trial"] == self._best_id)
        return {k: rec[k] for k in NAMES}

    @property
    def best_trial(self):
        """The best trial's row of :attr:`trials`, as a dict (None when every trial failed)."""
        if self._best_id is None:
            return None
        return dict(next(r for r in self._records if r["trial"] == self._best_id))

    @property
    def best_metric(self):
        if self._best_id is None:
            return None
        return next(r["metric"] for r in self._records if r["trial"] == self._best_id)

    def __len__(self):
        return len(self._records)

    def __repr__(self):
        done = sum(r["status"] != "failed" for r in self._records)
        return (f"SearchResult({self.strategy}, {len(self._records)} trials ({done} trained), best "
                f"{self.metric_name}={self.best_metric}, params={self.best_params})")

    def plot(self, ax=None):
        """The metric against the parameter count and against time (seconds from the start).

        Needs matplotlib. Returns the figure (its two axes when ``ax`` is a pair).
        """
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        else:
            fig = ax[0].figure
        ok = [r for r in self._records if r["status"] != "failed"]
        ax[0].scatter([r["n_params"] for r in ok], [r["metric"] for r in ok], s=14)
        ax[0].set_xscale("log")
        ax[0].set_xlabel("parameters")
        ax[1].scatter([r["finished"] for r in ok], [r["metric"] for r in ok], s=14)
        best, xs, ys = None, [], []
        for r in sorted(ok, key=lambda r: r["finished"]):
            if best is None or (r["metric"] > best if self.maximize else r["metric"] < best):
                best = r["metric"]
            xs.append(r["finished"])
            ys.append(best)
        ax[1].step(xs, ys, where="post", color="C1", label="best so far")
        ax[1].set_xlabel("seconds")
        ax[1].legend()
        for a in ax:
            a.set_ylabel(self.metric_name)
        return fig


class Progress:
    """A tqdm bar over trials with the best metric so far (a line per trial without tqdm); silent at verbose=0."""

    def __init__(self, total, metric_name, verbose):
        self.bar, self.verbose, self.metric_name, self.n = None, verbose, metric_name, 0
        self.total = total
        if verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="trial", desc="search", file=sys.stderr)

    def update(self, best):
        self.n += 1
        if not self.verbose:
            return
        text = "-" if best is None else f"{best:.4f}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"best {self.metric_name}={text}", refresh=False)
            self.bar.update(1)
        else:
            print(f"trial {self.n}/{self.total}: best {self.metric_name} {text}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
