from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect

from datasets_app import actions
from datasets_app.forms import ReadOptionsForm, RenameForm, SamplesQueryForm, UploadForm
from datasets_app.mapping import MappingError
from datasets_app.models import Dataset
from datasets_app.preparation import PreparationError
from datasets_app.quota import StorageUsage, storage_usage
from datasets_app.uploads import SizeLimitUploadHandler
from llmtuner import storage

STOP_POLLING = 286  # htmx stops an `every 2s` trigger on this status
SHAPE_LABELS = {"text": "text", "prompt_completion": "prompt + completion", "messages": "chat messages"}


def _get_dataset_for_user(request: HttpRequest, pk: int) -> Dataset:
    return get_object_or_404(Dataset.objects.select_related("owner"), pk=pk, owner=request.user)


def _upload_form(
    request: HttpRequest, data=None, files=None, usage: StorageUsage | None = None
) -> UploadForm:
    return UploadForm(
        data,
        files,
        max_bytes=actions.max_upload_bytes(),
        usage=usage,
        too_large=getattr(request, "upload_too_large", False),
    )


def _list_context(request: HttpRequest, form: UploadForm) -> dict:
    datasets = Dataset.objects.filter(owner=request.user).defer("preview", "sample_index")
    return {"datasets": datasets, "form": form}


@login_required
@require_safe
def dataset_list(request: HttpRequest) -> HttpResponse:
    return render(request, "datasets_app/list.html", _list_context(request, _upload_form(request)))


@login_required
@csrf_exempt  # the size limit must be in place before the body is read; CSRF is checked below
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    # Stopped at the upload limit, or at what is left of the user's storage quota if less.
    left = storage_usage(request.user.pk).left
    limit = min(actions.max_upload_bytes(), left)
    request.upload_handlers.insert(0, SizeLimitUploadHandler(request, limit))
    return _upload(request)


@csrf_protect
def _upload(request: HttpRequest) -> HttpResponse:
    form = _upload_form(request, request.POST, request.FILES, usage=storage_usage(request.user.pk))
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            dataset = actions.create_dataset(
                request.user,
                upload,
                upload.name,
                form.read_options(),
                name=form.cleaned_data["name"],
            )
        except MappingError as exc:
            form.add_error("mapping", str(exc))
        except PreparationError as exc:
            form.add_error("file", str(exc))
        else:
            messages.success(request, f"“{dataset.name}” is uploaded; its samples are being prepared.")
            url = reverse("datasets:detail", args=[dataset.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    if request.htmx:
        return render(request, "datasets_app/list.html#upload-form", {"form": form})
    return render(request, "datasets_app/list.html", _list_context(request, form), status=400)


def _detail_context(dataset: Dataset, **extra) -> dict:
    stats = dataset.stats or {}
    histogram = stats.get("histogram") or []
    tallest = max((bucket["count"] for bucket in histogram), default=0) or 1
    bars = [{**bucket, "percent": round(100 * bucket["count"] / tallest, 1)} for bucket in histogram]
    shape_label = SHAPE_LABELS.get(stats.get("shape", ""), "text")
    return {"dataset": dataset, "stats": stats, "bars": bars, "shape_label": shape_label, **extra}


@login_required
@require_safe
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    context = _detail_context(
        dataset,
        options_form=ReadOptionsForm.for_dataset(dataset),
        rename_form=RenameForm(initial={"name": dataset.name}),
    )
    return render(request, "datasets_app/detail.html", context)


@login_required
@require_safe
def status(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled part of the dataset page; reads the row only."""
    dataset = _get_dataset_for_user(request, pk)
    response = render(request, "datasets_app/detail.html#results", _detail_context(dataset))
    if dataset.is_final and request.htmx:
        response.status_code = STOP_POLLING
    return response


@login_required
@require_POST
def prepare_again(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    form = ReadOptionsForm.for_dataset(dataset, request.POST)
    if form.is_valid():
        try:
            actions.prepare_again(dataset, form.read_options())
        except MappingError as exc:
            form.add_error("mapping", str(exc))
        except PreparationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Preparing the samples again with the new settings.")
            return redirect("datasets:detail", pk=dataset.pk)
    context = _detail_context(
        dataset, options_form=form, rename_form=RenameForm(initial={"name": dataset.name}), options_open=True
    )
    return render(request, "datasets_app/detail.html", context, status=400)


@login_required
@require_POST
def rename(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        actions.rename_dataset(dataset, form.cleaned_data["name"])
        messages.success(request, "Renamed.")
        return redirect("datasets:detail", pk=dataset.pk)
    context = _detail_context(
        dataset, options_form=ReadOptionsForm.for_dataset(dataset), rename_form=form, rename_open=True
    )
    return render(request, "datasets_app/detail.html", context, status=400)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    if request.method == "POST":
        name = dataset.name
        actions.delete_dataset(dataset)
        messages.success(request, f"“{name}” and its files are deleted.")
        return redirect("datasets:list")
    return render(request, "datasets_app/delete.html", {"dataset": dataset})


@login_required
@require_safe
def samples(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    if not dataset.is_ready:
        messages.info(request, "The samples can be browsed once the dataset is ready.")
        return redirect("datasets:detail", pk=dataset.pk)
    split, page = SamplesQueryForm(request.GET).query()
    splits = [("train", "Training"), ("validation", "Validation")]
    context = {"dataset": dataset, "result": actions.read_samples(dataset, split, page), "splits": splits}
    template = "datasets_app/samples.html#page" if request.htmx else "datasets_app/samples.html"
    return render(request, template, context)


@login_required
@require_safe
def download(request: HttpRequest, pk: int, split: str) -> HttpResponse:
    dataset = _get_dataset_for_user(request, pk)
    key = {"train": dataset.train_file, "validation": dataset.validation_file}.get(split)
    if not key or not dataset.is_ready:
        raise Http404("No such file")
    filename = f"{slugify(dataset.name) or 'dataset'}-{split}.jsonl"
    return storage.download_response(key, filename)
