"""`mmsearch jobs show|watch|cancel`."""
from __future__ import annotations

import sys
from typing import Any

import click

from mmsearch.cli.common import EXIT_JOB_NOT_SUCCEEDED, client_of, dump, local_time, print_job_errors
from mmsearch.job_states import overall_state
from mmsearch.progress import ProgressBar


@click.group()
def jobs() -> None:
    """Show, watch and cancel jobs."""


def _show_job(body: dict[str, Any]) -> None:
    click.echo(f"job          {body['id']}")
    click.echo(f"kind         {body.get('kind')}   collection {body.get('collection')}")
    click.echo(f"state        {body['state']}")
    click.echo(f"items        {body['done']} done, {body['failed']} failed of {body['total']}")
    click.echo(f"created      {local_time(body.get('created_at'))}   started {local_time(body.get('started_at'))}   "
               f"finished {local_time(body.get('finished_at'))}")
    for e in body.get("errors", [])[:20]:
        click.echo(f"  error #{e.get('index')} {e.get('id')}: {e.get('code')}: {e.get('message')}")


@jobs.command("show")
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's state, counters and errors."""
    body = client_of(ctx).job(job_id)
    dump(body) if as_json else _show_job(body)


@jobs.command("watch")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final bodies as JSON.")
@click.pass_context
def jobs_watch(ctx: click.Context, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """One progress bar over the jobs until they are final; exits 3 unless all succeeded."""
    bar = ProgressBar(stream=sys.stderr, label="jobs")
    bodies = client_of(ctx).wait_jobs(list(job_ids), timeout=timeout, bar=bar)
    if as_json:
        dump(bodies if len(bodies) > 1 else bodies[0])
    else:
        for body in bodies:
            click.echo(f"{body['id']} {body['state']}: {body['done']} done, {body['failed']} failed "
                       f"of {body['total']}")
        print_job_errors(bodies)
    ctx.exit(0 if overall_state(bodies) == "succeeded" else EXIT_JOB_NOT_SUCCEEDED)


@jobs.command("cancel")
@click.argument("job_id", metavar="JOB")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel what has not run yet of a job."""
    client_of(ctx).cancel_job(job_id)
    click.echo(f"cancel requested for job {job_id}")
