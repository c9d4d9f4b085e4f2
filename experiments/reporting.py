"""What every measuring script does once it has its figures."""
import json


def report(run, format_table, args):
    """Measure (run(args): the figures as a plain dict), print them as
    format_table's Markdown and, when args.json names a file, write them
    there as JSON (the committed ones live in assets/). Returns the
    figures."""
    figures = run(args)
    print(format_table(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2), encoding='utf-8')
        print(f'wrote {args.json}')
    return figures
