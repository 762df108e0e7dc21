"""An upload handler that stops a file past the size limit while it streams in.

Put first in `request.upload_handlers` (before the body is read, so the view
is csrf_exempt and checks CSRF itself afterwards). Django's own handlers then
stream what passes to a temporary file, never whole into memory. Past the
limit the handler stops the upload, Django reads and discards the rest of the
body, and `request.upload_too_large` tells the view, which shows a message.
"""

from __future__ import annotations

from django.core.files.uploadhandler import FileUploadHandler, StopUpload

# Multipart framing and the form's other fields, on top of the file itself.
MULTIPART_ALLOWANCE = 64 * 1024


class SizeLimitUploadHandler(FileUploadHandler):
    def __init__(self, request, max_bytes: int):
        super().__init__(request)
        self.max_bytes = max_bytes
        self.received = 0
        self.too_large = False
        request.upload_too_large = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # A declared length past the limit: refuse before a byte is written anywhere.
        if content_length and content_length > self.max_bytes + MULTIPART_ALLOWANCE:
            self._refuse()
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0
        if self.too_large:
            raise StopUpload(connection_reset=False)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self._refuse()
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int):
        return None

    def _refuse(self) -> None:
        self.too_large = True
        self.request.upload_too_large = True
