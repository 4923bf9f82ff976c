"""`mmsearch jobs list|show|watch|cancel`."""
from __future__ import annotations

import sys
from typing import Any

import click

from mmsearch.cli.common import EXIT_JOB_NOT_SUCCEEDED, client_of, dump, local_time, print_job_errors, table
from mmsearch.job_states import overall_state
from mmsearch.progress import ProgressBar


JOB_STATES = ("queued", "running", "succeeded", "completed_with_errors", "failed", "cancelled")


@click.group()
def jobs() -> None:
    """List, show, watch and cancel jobs."""


@jobs.command("list")
@click.option("-c", "--collection", help="Only this collection's jobs.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(["ingest", "delete", "search", "export", "import"]),
              help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Jobs per page.")
@click.option("--cursor", help="Go on after the page that printed this cursor.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON page.")
@click.pass_context
def jobs_list(ctx: click.Context, collection: str | None, state: str | None, kind: str | None, limit: int,
              cursor: str | None, as_json: bool) -> None:
    """List jobs whose records still exist, newest first."""
    page = client_of(ctx).jobs(collection=collection, state=state, kind=kind, limit=limit, cursor=cursor)
    if as_json:
        dump(page)
        return
    table([[j["id"], j["kind"], j["collection"], j["state"], f"{j['done']}/{j['failed']}/{j['total']}",
            local_time(j.get("created_at"))] for j in page["jobs"]],
          ["JOB", "KIND", "COLLECTION", "STATE", "DONE/FAILED/TOTAL", "CREATED"])
    more = f"; next page: --cursor {page['next_cursor']}" if page["next_cursor"] else ""
    click.echo(f"{len(page['jobs'])} jobs{more}", err=True)


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
