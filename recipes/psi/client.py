"""PSI, site side: this site's IDs go out only as curve points under secret keys; the intersection comes back
as positions in this site's own list and is written to the site's workspace (psi_intersection.txt)."""

import argparse

import hpcflare.client as flare
from hpcflare.tabular.data import TableError
from hpcflare.tabular.psi import PsiSite


def synthetic_ids(site: str, n: int, overlap: float) -> list[str]:
    """``overlap`` x n IDs every site has (patient-000000...), the rest this site's own."""
    shared = int(n * overlap)
    return [f"patient-{i:07d}" for i in range(shared)] + [f"{site}-only-{i:07d}" for i in range(n - shared)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--ids-path", default=None, help="a text file per site, one ID per line; {site} = site name"
    )
    parser.add_argument("--n-ids", type=int, default=10_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    if args.ids_path:
        path = args.ids_path.replace("{site}", site)
        try:
            ids = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
        except OSError as exc:
            raise TableError(
                f"{site}: cannot read its IDs from {path} ({exc.strerror}); pass --ids-path"
            ) from None
    else:
        ids = synthetic_ids(site, args.n_ids, args.overlap)
    if not ids:
        raise TableError(f"{site} has no IDs; give it a non-empty ID file or leave it out of the job")
    psi = PsiSite(site, ids)
    while flare.is_running():
        task = flare.receive()
        flare.send(flare.FLModel(params=psi.answer(task.params, task.meta)))
    if psi.intersection is not None:
        out = flare.get_workspace() / "psi_intersection.txt"
        out.write_text("".join(f"{i}\n" for i in psi.intersection))
        print(f"{site}: {len(psi.intersection)} of {len(ids)} IDs in the intersection -> {out}", flush=True)


if __name__ == "__main__":
    main()
