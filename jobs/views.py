"""The jobs pages: list, new job (with a live estimate), job page and its polled partials, actions.

Polled partials read the database only and answer HTTP 286 once there is
nothing more to come, so htmx (and the chart script) stop asking.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from accounts.backends import known_user, session_user_id
from accounts.models import get_profile
from jobs import (
    actions,
    artifacts,
    compare,
    flash,
    history,
    instance_costs,
    lifecycle,
    model_card,
    polling,
    presets,
    pricing,
    queueing,
    resume,
)
from jobs import hub_check as hub
from jobs.estimate import format_duration
from jobs.forms import (
    CursorForm,
    JobFilterForm,
    NewJobForm,
    NewJobQuery,
    initial_for_new_job,
    initial_from_job,
    ready_datasets,
    sagemaker_availability,
)
from jobs.models import FINAL_STATES, Backend, BaseModel, JobStatus, LogLine, MetricPoint, TrainingJob
from llmtuner import storage
from training_scripts.hyperparameters import HYPERPARAMETERS, validate_hyperparameters

STOP_POLLING = 286  # htmx stops an `every 2s` trigger on this status
LIST_PAGE_SIZE = 50
LOG_LINES_ON_PAGE = 200
LOG_LINES_PER_TICK = 500
POINTS_PER_TICK = 5000
# A running local job whose heartbeat is older than this is shown as silent.
SILENT_AFTER_SECONDS = 15
# A queued job nobody picked up for this long gets a hint about the worker.
UNCLAIMED_AFTER_SECONDS = 30


def _progress_job(request: HttpRequest, pk: int) -> TrainingJob:
    job = polling.progress_job(request.user.pk, pk)
    if job is None:
        raise Http404("No such job")
    return job


def _get_job_for_user(request: HttpRequest, pk: int) -> TrainingJob:
    jobs = TrainingJob.objects.select_related("base_model", "dataset", "instance_type")
    return get_object_or_404(jobs, pk=pk, owner=request.user)


def _go_to(request: HttpRequest, to: TrainingJob | str) -> HttpResponse:
    """A redirect after an action; htmx is told to load the page whole rather than swap it in."""
    url = to if isinstance(to, str) else to.get_absolute_url()
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _polled(view):
    """For the job page's polls, each asked every 2 s: login_required, GET (or HEAD) only, and the job.

    The job is read with its owner's row in one prepared query (jobs/polling.py), and the user is
    signed in from that row (accounts.backends.known_user): Django checks the session against it
    as login_required would against the cached user, without that round trip.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, pk: int) -> HttpResponse:
        user_id = session_user_id(request)
        job = polling.progress_job(user_id, pk) if user_id is not None else None
        with known_user(job.owner if job else None):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
        if request.method not in ("GET", "HEAD"):  # checked after signing in, as everywhere else
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if job is None:
            raise Http404("No such job")
        return view(request, job)

    return wrapper


# --- Figures shown for a job -------------------------------------------------------------------


def _elapsed_seconds(job: TrainingJob, now: datetime) -> float | None:
    if not job.started_at:
        return None
    return ((job.finished_at or now) - job.started_at).total_seconds()


def _cost_display(job: TrainingJob, now: datetime) -> str:
    if job.backend == Backend.LOCAL:
        return "free"
    cost = job.cost_usd or Decimal(0)
    if not job.is_final and job.instance_type and job.training_started_at:
        # Between two runs of the cost poller, the cost so far is worked out from the clock.
        so_far = pricing.running_cost(job.instance_type, job.instance_count, job.training_started_at, now)
        cost = max(cost, so_far)
    return f"${cost:.2f}"


def _figure(value: float | None, places: int) -> str:
    """`value` as the page shows it: rounded half up, thousands separated, a dash when unknown."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)  # a diverged run's loss: nan or inf, as training logged it
    rounded = Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{rounded:,}"


def _annotate(job: TrainingJob, now: datetime, line: dict | None = None) -> TrainingJob:
    """Attach what the templates show (durations, cost, figures, warnings), all from the row itself.

    Figures are formatted here rather than with template filters: the progress card is rendered
    every 2 s for every open job page, and the filters were a large part of its rendering time.
    """
    job.url = job.get_absolute_url()  # the page's own URLs hang below it: one reverse, not eight
    job.percent_display = str(job.percent)  # an int in a template goes through localisation, four times
    job.step_display = f"{job.step:,} of {f'{job.total_steps:,}' if job.total_steps else '?'}"
    job.epoch_display = _figure(job.epoch, 2)
    job.loss_display = _figure(job.loss, 4)
    job.eval_loss_display = _figure(job.eval_loss, 4)
    job.speed_display = _figure(job.tokens_per_second or None, 0)
    job.elapsed_seconds = _elapsed_seconds(job, now)
    job.elapsed_display = format_duration(job.elapsed_seconds)
    job.eta_display = history.time_left_display(job, now) if not job.is_final else ""
    job.phase_display = history.phase_label(job.phase) if not job.is_final else ""
    job.cost_display = _cost_display(job, now)
    job.estimated_display = format_duration(job.estimated_seconds)
    if job.estimated_slow_seconds and format_duration(job.estimated_slow_seconds) != job.estimated_display:
        job.estimated_display += f" to {format_duration(job.estimated_slow_seconds)}"
    job.warning = ""
    job.queue_place = None
    if job.status == JobStatus.QUEUED and job.backend == Backend.LOCAL:
        # `line`: the whole queue's places, worked out once for a page of jobs.
        job.queue_place = (queueing.line(now) if line is None else line).get(job.pk)
        waited = (now - job.created_at).total_seconds()
        # A busy worker still beats: the hint is for no training worker at all, not a long queue.
        place = job.queue_place
        alive = place.workers if place is not None else queueing.workers_alive(now=now)
        if waited > UNCLAIMED_AFTER_SECONDS and not alive:
            job.warning = (
                f"No worker has picked it up for {format_duration(waited)}, and no training worker is "
                "running: check that a Celery worker serves the “training” queue (make run starts one)."
            )
    elif job.status not in FINAL_STATES and job.backend == Backend.LOCAL and job.heartbeat_at:
        silent = (now - job.heartbeat_at).total_seconds()
        if silent > SILENT_AFTER_SECONDS:
            job.warning = (
                f"No word from the worker for {format_duration(silent)}; if it stays silent the job will be "
                "marked failed, and you can retry it."
            )
    return job


def _progress_context(job: TrainingJob) -> dict:
    job = _annotate(job, timezone.now())
    job.has_model = artifacts.has_model(job)  # for its buttons: download, playground
    return {"job": job}


# --- List ----------------------------------------------------------------------------------------


@login_required
@require_safe
def job_list(request: HttpRequest) -> HttpResponse:
    form = JobFilterForm(request.GET)
    jobs = form.filter(
        TrainingJob.objects.filter(owner=request.user)
        .select_related("base_model", "dataset", "instance_type")
        .defer(
            "hyperparameters",
            "metrics",
            "sagemaker_log_state",
            "phase_timeline",
            "run_facts",
            "dataset__stats",
            "dataset__preview",
            "dataset__sample_index",
        )
    )
    page = Paginator(jobs, LIST_PAGE_SIZE).get_page(form.page_number)
    now = timezone.now()
    waiting_here = any(j.status == JobStatus.QUEUED and j.backend == Backend.LOCAL for j in page.object_list)
    line = queueing.line(now) if waiting_here else {}
    rows = [_annotate(job, now, line) for job in page.object_list]
    still_running = any(job.status not in FINAL_STATES for job in rows)
    context = {
        "form": form,
        "page": page,
        "rows": rows,
        "polling": still_running,
        "poll_url": request.get_full_path(),
    }
    if request.htmx:
        response = render(request, "jobs/list.html#rows", context)
        if not still_running:
            response.status_code = STOP_POLLING
        return response
    has_datasets = ready_datasets(request.user).exists()
    return render(request, "jobs/list.html", {**context, "has_datasets": has_datasets})


@login_required
@require_safe
def compare_jobs(request: HttpRequest) -> HttpResponse:
    """2 to 4 of the user's jobs side by side (chosen with the checkboxes of the jobs list)."""
    form = compare.CompareForm(request.GET)
    if not form.is_valid():
        context = {"error": form.errors["job"][0], "comparison": None}
        return render(request, "jobs/compare.html", context, status=400)
    jobs = compare.jobs_to_compare(TrainingJob.objects.filter(owner=request.user), form.cleaned_data["job"])
    if jobs is None:
        raise Http404("No such job")
    now = timezone.now()
    comparison = compare.compare([_annotate(job, now) for job in jobs])
    return render(request, "jobs/compare.html", {"comparison": comparison, "series": comparison.series})


# --- New job -------------------------------------------------------------------------------------


def _new_job_page(
    request: HttpRequest, form: NewJobForm, status: int = 200, source=None, continuing: bool = False
) -> HttpResponse:
    context = {
        "form": form,
        "continuing": continuing,
        "form_action": reverse("jobs:continue", args=[source.pk]) if continuing else reverse("jobs:new"),
        "estimate": form.estimate if form.is_bound else None,
        "has_datasets": ready_datasets(request.user).exists(),
        "source": source,
        "notify": get_profile(request.user).email_notifications,
    }
    if not form.is_bound:
        context.update(_unbound_estimate(form))
    return render(request, "jobs/new.html", context, status=status)


def _unbound_estimate(form: NewJobForm) -> dict:
    """Show the estimate of the starting values straight away."""
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else getattr(value, "pk", value)
    probe = NewJobForm(form.user, data)
    probe.is_valid()
    return {"estimate": probe.estimate, "estimate_form": probe}


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def new_job(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = NewJobForm(request.user, request.POST)
        # The same form again (a double click, a resent request) goes to the job it made, looked
        # up before the form is judged: that job may have changed what the form would say.
        job, made = actions.launched_with(request.user, form.posted_token), False
        if job is None:
            if not form.is_valid():
                return _new_job_page(request, form, status=400)
            try:
                job, made = _launch_from(request, form)
            except actions.LimitRefused as refusal:  # over the cap on local jobs, checked at launch
                form.add_error(None, str(refusal))
                return _new_job_page(request, form, status=400)
        return _launched(request, job, made)
    query = NewJobQuery(request.user, request.GET)
    if request.GET.get("apply_preset"):
        # The no-JavaScript way to apply a preset: the form comes back with the preset's values.
        form = NewJobForm.refilled(request.user, request.GET)
        form.is_valid()
        return _new_job_page(request, form)
    form = NewJobForm(request.user, initial=initial_for_new_job(request.user, query))
    return _new_job_page(request, form)


def _launch_from(request: HttpRequest, form: NewJobForm, **extra) -> tuple[TrainingJob, bool]:
    data = form.cleaned_data
    return actions.launch_once(
        request.user,
        form.posted_token,
        estimate=form.estimate,
        name=form.job_name(),
        dataset=data["dataset"],
        base_model=data["base_model"],
        backend=data["backend"],
        method=data["hyperparameters"]["method"],
        hyperparameters=data["hyperparameters"],
        instance_type=data["instance_type"],
        instance_count=data["instance_count"],
        max_cost_usd=data["max_cost_usd"],
        use_spot=data["use_spot"],
        **extra,
    )


def _launched(request: HttpRequest, job: TrainingJob, made: bool) -> HttpResponse:
    if made:
        messages.success(request, f"“{job.name}” is queued.")
    else:
        messages.info(request, f"“{job.name}” was already launched from this form.")
    return _go_to(request, job)


@login_required
@require_safe
def estimate(request: HttpRequest) -> HttpResponse:
    """The live estimate of the new-job form: steps, tokens, time, cost and what is wrong, as fields change.

    When the preset, dataset or model is not the one the shown hyperparameters were filled
    in for, they come back too (out of band), filled in with the preset's values.
    """
    form = NewJobForm(request.user, request.GET)
    refill = form.needs_refill()
    if refill:
        form = NewJobForm.refilled(request.user, request.GET)
    form.is_valid()
    context = {"form": form, "estimate": form.estimate, "estimate_form": form, "oob": True}
    html = render_to_string("jobs/new.html#estimate", context, request=request)
    if refill:
        html += render_to_string("jobs/new.html#hyperparameters", context, request=request)
    return HttpResponse(html)


@login_required
@require_safe
def hub_check(request: HttpRequest) -> HttpResponse:
    """Whether the worker can fetch a catalogue model (?base_model=) from the Hub; polled until answered.

    The catalogue is everyone's: the model is a query parameter, not an owned object's id.
    """
    query = NewJobQuery(request.user, request.GET)
    model = query.cleaned_data.get("base_model") if query.is_valid() else None
    if model is None:
        raise Http404("No such model in the catalogue")
    result = hub.request_check(model.hub_id) if hub.needs_hub(model.hub_id) else None
    response = render(request, "jobs/_hub_check.html", {"model": model, "check": result})
    if result is None or result.state != "pending":
        response.status_code = STOP_POLLING
    return response


@login_required
@require_safe
def instance_types(request: HttpRequest) -> HttpResponse:
    """The time and cost of every SageMaker instance type for a dataset and model, set up or not."""
    query = NewJobQuery(request.user, request.GET)
    query.is_valid()
    data = query.cleaned_data
    dataset = data.get("dataset") or ready_datasets(request.user).first()
    base_model = data.get("base_model") or BaseModel.objects.filter(is_active=True).first()
    preset = data.get("preset") or presets.AUTOMATIC
    if preset == presets.CUSTOM:
        preset = presets.AUTOMATIC
    rows, errors = [], {}
    if dataset is not None and base_model is not None:
        hyperparameters, errors = instance_costs.hyperparameters_for(preset, base_model, dataset)
        if not errors:
            rows = instance_costs.instance_costs(dataset, base_model, hyperparameters)
    available, reason = sagemaker_availability()
    context = {
        "query": query,
        "datasets": ready_datasets(request.user),
        "models": BaseModel.objects.filter(is_active=True),
        "presets": [choice for choice in presets.PRESET_CHOICES if choice[0] != presets.CUSTOM],
        "dataset": dataset,
        "base_model": base_model,
        "preset": preset,
        "rows": rows,
        "errors": errors,
        "sagemaker_available": available,
        "sagemaker_reason": reason,
    }
    return render(request, "jobs/instance_types.html", context)


@login_required
@require_safe
def clone(request: HttpRequest, pk: int) -> HttpResponse:
    """A new-job form with this job's settings."""
    source = _get_job_for_user(request, pk)
    form = NewJobForm(request.user, initial=initial_from_job(source, request.user))
    if source.dataset_id and form.initial["dataset"] is None:
        messages.warning(request, "Its dataset is no longer ready: choose another one.")
    return _new_job_page(request, form, source=source)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def continue_training(request: HttpRequest, pk: int) -> HttpResponse:
    """A new-job form like clone's, for a job that starts from this completed job's tuned model."""
    source = _get_job_for_user(request, pk)
    problem = resume.continue_problem(source)
    if problem:
        messages.error(request, problem)
        return redirect(source)
    if request.method != "POST":  # GET or HEAD: the form
        form = NewJobForm(request.user, initial=resume.initial_for_continuing(source, request.user))
        return _new_job_page(request, form, source=source, continuing=True)
    form = NewJobForm(request.user, request.POST)
    job, made = actions.launched_with(request.user, form.posted_token), False
    if job is None:
        if form.is_valid():
            data = form.cleaned_data
            problem = resume.continuation_problem(
                source, data["base_model"], data["hyperparameters"]["method"]
            )
            if problem:
                form.add_error(None, problem)
        if not form.is_valid():
            return _new_job_page(request, form, status=400, source=source, continuing=True)
        try:
            job, made = _launch_from(request, form, continued_from=source)
        except actions.LimitRefused as refusal:  # over the cap on local jobs, checked at launch
            form.add_error(None, str(refusal))
            return _new_job_page(request, form, status=400, source=source, continuing=True)
    return _launched(request, job, made)


# --- Job page and its polled parts ---------------------------------------------------------------


@login_required
@require_safe
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    lines = list(
        LogLine.objects.filter(job=job).order_by("-seq").values_list("seq", "text")[:LOG_LINES_ON_PAGE]
    )[::-1]
    # As finetune.py will read them: what the job leaves out takes the default.
    used, errors = validate_hyperparameters(job.hyperparameters)
    values = job.hyperparameters if errors else used
    # (name, label in words, value, help), as the form labels them; an unknown name is its own label
    hyperparameters = [
        (name, HYPERPARAMETERS[name].title, values[name], HYPERPARAMETERS[name].help)
        if name in HYPERPARAMETERS
        else (name, name, values[name], "")
        for name in (*HYPERPARAMETERS, *sorted(set(values) - set(HYPERPARAMETERS)))
        if name in values
    ]
    context = {
        **_progress_context(job),
        "lines": lines,
        "log_after": lines[-1][0] if lines else 0,
        "log_polling": not job.is_final,
        "log_trimmed": bool(lines) and lines[0][0] > 1,
        "hyperparameters": hyperparameters,
        "notify": get_profile(request.user).email_notifications,
        "resume": resume.page_notes(job),
    }
    return render(request, "jobs/detail.html", context)


@_polled
def progress(request: HttpRequest, job: TrainingJob) -> HttpResponse:
    """The polled state of one job: one query, whatever its size; 286 once it is final."""
    context = {**_progress_context(job), "messages_expired": flash.messages_expired(request.GET, job.status)}
    response = render(request, "jobs/detail.html#progress", context)
    if job.is_final:
        response.status_code = STOP_POLLING
    return response


@_polled
def metrics(request: HttpRequest, job: TrainingJob) -> JsonResponse:
    """Loss points after the `after` id cursor, as [id, step, loss, eval_loss]; 286 once all are sent."""
    # The state was read first: points are written before a job ends.
    after = CursorForm(request.GET).cursor
    points = list(
        MetricPoint.objects.filter(job=job, id__gt=after)
        .order_by("id")
        .values_list("id", "step", "loss", "eval_loss")[:POINTS_PER_TICK]
    )
    done = job.is_final and len(points) < POINTS_PER_TICK
    payload = {
        "points": [list(point) for point in points],
        "after": points[-1][0] if points else after,
        "final": done,
        "total_steps": job.total_steps,
    }
    if job.resumed_at_step:  # the chart marks where this attempt took over
        payload["resumed_at_step"] = job.resumed_at_step
    return JsonResponse(payload, status=STOP_POLLING if done else 200)


@_polled
def logs(request: HttpRequest, job: TrainingJob) -> HttpResponse:
    """Log lines after the `after` sequence number, appended out of band; 286 once all are sent."""
    after = CursorForm(request.GET).cursor
    lines = list(
        LogLine.objects.filter(job=job, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "text")[:LOG_LINES_PER_TICK]
    )
    done = job.is_final and len(lines) < LOG_LINES_PER_TICK
    context = {
        "job": job,
        "lines": lines,
        "log_after": lines[-1][0] if lines else after,
        "log_polling": not done,
        "log_gap": bool(lines) and lines[0][0] > after + 1 and after > 0,
    }
    html = render_to_string("jobs/detail.html#log-poller", context, request=request)
    if lines:
        html += render_to_string("jobs/detail.html#log-append", context, request=request)
    return HttpResponse(html, status=STOP_POLLING if done else 200)


# --- Actions -------------------------------------------------------------------------------------


def stop_outcome(job: TrainingJob) -> str:
    """What stopping does to this job, as the confirmation and the stopped job both say it."""
    if job.status == JobStatus.QUEUED:
        return "it leaves the queue before it starts; there is no model to keep."
    if job.step:
        return (
            "training ends at the step it is on, and the model so far is saved: you can download it "
            "and try it in the playground."
        )
    return "training ends; no step has run yet, and a model is saved only once one has."


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def stop(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: a confirmation page (works without JavaScript). POST: stop the job."""
    job = _get_job_for_user(request, pk)
    if request.method != "POST":  # GET or HEAD: the page
        if job.is_final:
            messages.info(request, f"“{job.name}” has already ended.")
            return redirect(job)
        return render(request, "jobs/stop.html", {"job": job, "outcome": stop_outcome(job)})
    stopped = lifecycle.request_stop(job)
    if request.htmx:
        # The progress card comes back in its new state (stopping, or stopped if it was queued).
        job = _progress_job(request, pk)
        response = render(request, "jobs/detail.html#progress", _progress_context(job))
        if job.is_final:
            response.status_code = STOP_POLLING
        return response
    if stopped:
        messages.success(request, f"Stopping “{job.name}”: {stop_outcome(job)}")
    elif not job.is_final:
        messages.info(request, f"“{job.name}” is already stopping.")
    return redirect(job)


@login_required
@require_POST
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    try:
        new, made = actions.retry_job(job)
    except actions.ActionError as error:
        messages.error(request, str(error))
        return redirect(job)
    if made:
        resumes = f": it resumes from step {new.resumed_at_step:,}" if new.resumed_at_step else ""
        if not new.resumed_at_step and job.checkpoint_step:
            resumes = (
                f": it starts over, as its checkpoint at step {job.checkpoint_step:,} is no longer stored"
            )
        messages.success(request, f"Attempt {new.attempt} of “{new.name}” is queued{resumes}.")
    else:
        messages.info(request, f"“{job.name}” was retried already: this is attempt {new.attempt}.")
    return _go_to(request, new)


@login_required
@require_POST
def resume_job(request: HttpRequest, pk: int) -> HttpResponse:
    """The next attempt from the last checkpoint, on the backend chosen (the checkpoint is the same)."""
    job = _get_job_for_user(request, pk)
    form = resume.ResumeForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect(job)
    try:
        new, made = resume.resume_job(job, form.cleaned_data["backend"], form.cleaned_data["instance_type"])
    except resume.ResumeRefused as error:
        messages.error(request, str(error))
        return redirect(job)
    if made:
        where = new.get_backend_display() + (f" ({new.instance_type.name})" if new.instance_type else "")
        messages.success(
            request,
            f"Attempt {new.attempt} of “{new.name}” is queued on {where}: "
            f"it resumes from step {new.resumed_at_step:,}.",
        )
    else:
        messages.info(request, f"“{job.name}” was resumed already: this is attempt {new.attempt}.")
    return _go_to(request, new)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: a confirmation page. POST: remove a final job with its stored model and log."""
    job = _get_job_for_user(request, pk)
    if request.method != "POST":  # GET or HEAD: the page
        return render(request, "jobs/delete.html", {"job": job})
    try:
        actions.delete_job(job)
    except actions.ActionError as error:
        messages.error(request, str(error))
        return redirect(job)
    messages.success(request, f"“{job.name}” and its files are deleted.")
    return _go_to(request, reverse("jobs:list"))


@login_required
@require_safe
def download(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    """The tuned model's Hugging Face folder as a zip, streamed from storage as it is read."""
    job = _get_job_for_user(request, pk)
    folder = slugify(job.name) or f"job-{job.pk}"
    variant = request.GET.get("variant") or None
    if variant == "adapter":
        folder += "-adapter"
    try:
        content = artifacts.zip_stream(job, folder, variant)
    except artifacts.ModelArtifactsError as error:
        raise Http404(str(error)) from None
    response = StreamingHttpResponse(content, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{folder}.zip"'
    return response


EVALUATION_PAGE_SIZE = 10


@login_required
@require_safe
def evaluation(request: HttpRequest, pk: int) -> HttpResponse:
    """The evaluation of a completed job: tuned against base per metric, and the scored samples, paged."""
    job = _get_job_for_user(request, pk)
    try:
        found = artifacts.evaluation(job)
        error = None
    except artifacts.ModelArtifactsError as problem:
        found, error = None, str(problem)
    samples = (found or {}).get("samples") or []
    context = {
        "job": job,
        "evaluation": found,
        "error": error,
        "rows": model_card.metric_rows(found),
        "page": Paginator(samples, EVALUATION_PAGE_SIZE).get_page(request.GET.get("page")),
    }
    return render(request, "jobs/_evaluation.html#evaluation-body", context)


@login_required
@require_safe
def log_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The whole log of a finished job (the page keeps only its last lines)."""
    job = _get_job_for_user(request, pk)
    if not job.log_key or not storage.exists(job.log_key):
        raise Http404("The full log is kept once the job has ended.")
    return storage.download_response(job.log_key, f"{slugify(job.name) or 'job'}-{job.pk}.log")
