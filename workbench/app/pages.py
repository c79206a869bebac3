"""The app's pages, in navigation order: the one list the app, its tests, the screenshots and the
benchmark read. Adding a page = a file in ``app_pages/`` and one line here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    name: str  # the file's stem in app_pages/, also the screenshot's name
    title: str
    icon: str

    @property
    def path(self) -> str:
        return f"app_pages/{self.name}.py"


PAGES = (Page("runs", "Runs", ":material/folder_open:"),
         Page("roles", "Roles", ":material/view_agenda:"),
         Page("model_map", "Model map", ":material/account_tree:"),
         Page("perplexity", "Perplexity and tasks", ":material/bar_chart:"),
         Page("layer_sweep", "Layer sweep", ":material/grid_on:"),
         Page("random_controls", "Random controls", ":material/scatter_plot:"),
         Page("compare", "Compare", ":material/compare_arrows:"),
         Page("mediation", "Mediation", ":material/alt_route:"),
         Page("representations", "Representations", ":material/stacked_line_chart:"),
         Page("embedding_map", "Embedding map", ":material/bubble_chart:"),
         Page("report", "Report", ":material/article:"),
         Page("launch", "Launch", ":material/rocket_launch:"))

NAMES = tuple(p.name for p in PAGES)
