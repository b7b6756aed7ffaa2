//! The GUI's part of the OpenAPI document (`/gui`, `/gui/{asset}`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::operation;

operation!(
    #[utoipa::path(get, path = "/gui", tag = "GUI", operation_id = "gui",
        summary = "The GUI: open it in a browser",
        responses((status = 200, description = "The GUI's page", body = String, content_type = "text/html")))]
    gui
);

operation!(
    #[utoipa::path(get, path = "/gui/{asset}", tag = "GUI", operation_id = "guiAsset",
        summary = "The GUI's script and style sheet",
        params(("asset" = String, Path, description = "`app.js`, `app.css` or `index.html`")),
        responses(
            (status = 200, description = "The file", content(
                (String = "text/javascript"), (String = "text/css"), (String = "text/html"))),
            (status = 404, description = "No such file", body = crate::api::openapi::ErrorSchema),
        ))]
    gui_asset
);
