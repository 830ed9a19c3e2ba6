import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';

/** One verdict of the health check (layerq_nb/lab/health.py: Check). */
interface ICheck {
  name: string;
  status: 'ok' | 'info' | 'problem';
  detail: string;
  fix: string;
}

interface IReport {
  checks: ICheck[];
  problems: number;
  server: { python: string; versions: Record<string, string>; labextensions: Record<string, string> };
  kernel: { python?: string; versions?: Record<string, string>; error?: string };
}

function element(tag: string, className: string, text = ''): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/**
 * The health panel: one row per check (status, what was found, the one-line fix), then the versions
 * of the widget stack on both sides, server and kernel.
 */
export class HealthView extends Widget {
  constructor() {
    super();
    this.addClass('lq-health');
    this.node.dataset.testid = 'layerq-health';
    void this.refresh();
  }

  async refresh(): Promise<void> {
    this.node.replaceChildren(element('p', 'lq-health-pending', 'Checking the server and the kernel’s Python…'));
    let report: IReport;
    try {
      report = await requestAPI<IReport>('health');
    } catch (err) {
      this.node.replaceChildren(
        element('h2', 'lq-health-summary lq-problem', 'The LayerQ server extension did not answer'),
        element('p', 'lq-health-fix', `${err}. Fix: pip install layerq_nb into the environment that runs jupyter lab, then restart it.`)
      );
      return;
    }
    const summary = report.problems
      ? `${report.problems} problem${report.problems > 1 ? 's' : ''} found`
      : 'Everything LayerQ needs is in place';
    const table = element('table', 'lq-health-table');
    const head = table.appendChild(document.createElement('tr'));
    for (const title of ['', 'check', 'what was found', 'fix']) {
      head.appendChild(element('th', '', title));
    }
    for (const check of report.checks) {
      const row = table.appendChild(element('tr', `lq-health-row lq-${check.status}`));
      row.dataset.status = check.status;
      row.appendChild(element('td', 'lq-health-status', check.status === 'ok' ? '✓' : check.status === 'info' ? 'i' : '✗'));
      row.appendChild(element('td', 'lq-health-name', check.name));
      row.appendChild(element('td', 'lq-health-detail', check.detail));
      row.appendChild(element('td', 'lq-health-fix', check.fix));
    }
    const versions = element('table', 'lq-health-versions');
    const vhead = versions.appendChild(document.createElement('tr'));
    for (const title of ['distribution', 'server', 'kernel']) {
      vhead.appendChild(element('th', '', title));
    }
    for (const [dist, version] of Object.entries(report.server.versions)) {
      const row = versions.appendChild(document.createElement('tr'));
      row.appendChild(element('td', '', dist));
      row.appendChild(element('td', '', version));
      row.appendChild(element('td', '', report.kernel.versions?.[dist] ?? '?'));
    }
    this.node.replaceChildren(
      element('h2', `lq-health-summary ${report.problems ? 'lq-problem' : 'lq-ok'}`, summary),
      table,
      element('h3', '', 'The widget stack'),
      element('p', 'lq-health-where', `server: ${report.server.python}; kernel: ${report.kernel.python ?? report.kernel.error}`),
      versions
    );
  }
}
