/**
 * layerq-nb: the LayerQ tutorials inside JupyterLab.
 *
 * - a "LayerQ tutorials" launcher section, one card per tutorial (title, one line, time);
 * - a LayerQ main menu and the same commands in the palette: open tutorial NN, reset tutorial NN to a
 *   clean copy (the learner's version is kept as a timestamped backup), open the syllabus, health check;
 * - a health panel (what `%layerq doctor` knows, plus what the kernel's Python sees), each problem
 *   with its one-line fix;
 * - a setting for the folder the learner's copies go to (inside the server root).
 *
 * The file work is done by the server extension (layerq_nb/lab, REST under /layerq/).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  InputDialog,
  MainAreaWidget,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon, refreshIcon, ToolbarButton } from '@jupyterlab/ui-components';
import { Menu } from '@lumino/widgets';

import { requestAPI } from './api';
import { HealthView } from './health';

const PLUGIN_ID = 'layerq-nb:plugin';
const CATEGORY = 'LayerQ tutorials';
const DEFAULT_FOLDER = 'layerq-tutorials';

namespace CommandIDs {
  export const open = 'layerq:open-tutorial';
  export const reset = 'layerq:reset-tutorial';
  export const syllabus = 'layerq:open-syllabus';
  export const health = 'layerq:health-check';
}

/** One tutorial as the server lists it (layerq_nb/lab/tutorials.py: Tutorial). */
interface ITutorial {
  number: string;
  name: string;
  title: string;
  summary: string;
  time: string;
}

const LOGO =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">' +
  '<rect x="3" y="15" width="18" height="4" rx="1" class="jp-icon-brand0" fill="#4E8DCB"/>' +
  '<rect x="5" y="10" width="14" height="4" rx="1" class="jp-icon-brand0" fill="#4E8DCB" opacity="0.75"/>' +
  '<rect x="8" y="5" width="8" height="4" rx="1" class="jp-icon-brand0" fill="#4E8DCB" opacity="0.5"/></svg>';

export const layerqIcon = new LabIcon({ name: 'layerq-nb:logo', svgstr: LOGO });

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'LayerQ tutorials in the launcher, a LayerQ menu, reset to a clean copy, a health check.',
  autoStart: true,
  requires: [IDocumentManager],
  optional: [ICommandPalette, ILauncher, IMainMenu, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    mainMenu: IMainMenu | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const { commands, shell } = app;
    const known = new Map<string, ITutorial>();
    let folder = DEFAULT_FOLDER;

    // every request waits for the settings, so a click right after start-up uses the learner's folder
    const settingsLoaded: Promise<void> = !settingRegistry
      ? Promise.resolve()
      : settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const read = () => {
            folder = ((settings.get('tutorialsFolder').composite as string) || DEFAULT_FOLDER).trim();
          };
          read();
          settings.changed.connect(read);
        })
        .catch(reason => console.warn('layerq-nb: settings not loaded, using', DEFAULT_FOLDER, reason));

    const describe = (number: string): string => {
      const t = known.get(number);
      return t ? `${t.number} · ${t.title}` : `tutorial ${number}`;
    };

    /** A launcher card's text: 'NN · title', the syllabus's one line, the time (style/index.css breaks the lines). */
    const card = (number: string): string => {
      const t = known.get(number);
      return t ? [describe(number), t.summary, t.time].filter(Boolean).join('\n\n') : describe(number);
    };

    /** The number in the command's args, or one the learner picks from a list. */
    const pick = async (args: any, verb: string): Promise<string | null> => {
      if (args.number) {
        return String(args.number);
      }
      const items = [...known.values()].map(t => `${t.number} · ${t.title}`);
      const result = await InputDialog.getItem({ title: `${verb} which tutorial?`, items });
      return result.button.accept && result.value ? result.value.slice(0, 2) : null;
    };

    const post = async (endpoint: string) => {
      await settingsLoaded;
      return requestAPI<any>(endpoint, { method: 'POST', body: JSON.stringify({ folder }) });
    };

    commands.addCommand(CommandIDs.open, {
      label: args =>
        args.number
          ? args.mode === 'card'
            ? card(args.number as string)
            : args.mode === 'menu'
              ? describe(args.number as string)
              : `Open Tutorial ${describe(args.number as string)}`
          : 'Open Tutorial…',
      caption: args => {
        const t = known.get(args.number as string);
        return t ? `${t.number} · ${t.title}: ${t.summary} (${t.time}). Opens your own copy.` : 'Open your copy of a LayerQ tutorial';
      },
      icon: layerqIcon,
      execute: async args => {
        const number = await pick(args, 'Open');
        if (!number) {
          return;
        }
        try {
          const copy = await post(`tutorials/${number}/open`);
          if (copy.created) {
            Notification.info(`Your copy of tutorial ${describe(number)} is ${copy.path}`, { autoClose: 5000 });
          }
          return docManager.openOrReveal(copy.path);
        } catch (err) {
          void showErrorMessage('LayerQ: could not open the tutorial', String(err));
        }
      }
    });

    commands.addCommand(CommandIDs.reset, {
      label: args =>
        args.number
          ? args.mode === 'menu'
            ? describe(args.number as string)
            : `Reset Tutorial ${describe(args.number as string)} to a Clean Copy`
          : 'Reset Tutorial to a Clean Copy…',
      caption: 'Keep your version as a timestamped backup, then write a clean copy of the tutorial',
      execute: async args => {
        const number = await pick(args, 'Reset');
        if (!number) {
          return;
        }
        const name = known.get(number)?.name ?? number;
        const answer = await showDialog({
          title: `Reset tutorial ${describe(number)}?`,
          body:
            `Your copy is kept as a backup in ${folder}/backups/${name}-<date and time>.ipynb; ` +
            'then a clean copy from the package replaces it.',
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Reset' })]
        });
        if (!answer.button.accept) {
          return;
        }
        try {
          // the server names the copy's path (the folder may be written in several ways)
          const { path } = await post(`tutorials/${number}/open`);
          const open = docManager.findWidget(path, null);
          if (open) {
            await open.context.save(); // the backup then holds the learner's latest edits
          }
          const reset = await post(`tutorials/${number}/reset`);
          const widget = docManager.findWidget(reset.path, null);
          if (widget) {
            await widget.context.revert();
            shell.activateById(widget.id);
          } else {
            docManager.openOrReveal(reset.path);
          }
          Notification.success(
            reset.backup
              ? `Tutorial ${number} is clean again; your version is in ${reset.backup}`
              : `Tutorial ${number}: a clean copy is in ${reset.path}`,
            { autoClose: 8000 }
          );
        } catch (err) {
          void showErrorMessage('LayerQ: could not reset the tutorial', String(err));
        }
      }
    });

    commands.addCommand(CommandIDs.syllabus, {
      label: 'Open the LayerQ Syllabus',
      caption: 'The tutorials in order: the story of each, what you build, how long it takes',
      icon: layerqIcon,
      execute: async () => {
        try {
          const answer = await post('syllabus');
          return docManager.openOrReveal(answer.path, 'Markdown Preview');
        } catch (err) {
          void showErrorMessage('LayerQ: could not open the syllabus', String(err));
        }
      }
    });

    let health: MainAreaWidget<HealthView> | null = null;
    commands.addCommand(CommandIDs.health, {
      label: 'LayerQ Health Check',
      caption: 'Widget front ends, the kernel, device, memory and model weights, each problem with its fix',
      icon: layerqIcon,
      execute: () => {
        if (!health || health.isDisposed) {
          const content = new HealthView();
          health = new MainAreaWidget({ content });
          health.id = 'layerq-health';
          health.title.label = 'LayerQ Health';
          health.title.icon = layerqIcon;
          health.title.closable = true;
          health.toolbar.addItem(
            'refresh',
            new ToolbarButton({ icon: refreshIcon, tooltip: 'Run the checks again', onClick: () => void content.refresh() })
          );
          shell.add(health, 'main');
        } else {
          void health.content.refresh();
        }
        shell.activateById(health.id);
        return health;
      }
    });

    const menu = mainMenu ? new Menu({ commands }) : null;
    if (menu && mainMenu) {
      menu.id = 'layerq-menu';
      menu.title.label = 'LayerQ';
      mainMenu.addMenu(menu, true, { rank: 1000 });
    }
    if (palette) {
      for (const command of [CommandIDs.syllabus, CommandIDs.health]) {
        palette.addItem({ command, category: 'LayerQ' });
      }
    }

    void requestAPI<{ tutorials: ITutorial[] }>('tutorials')
      .then(({ tutorials }) => {
        const openMenu = new Menu({ commands });
        openMenu.title.label = 'Open Tutorial';
        const resetMenu = new Menu({ commands });
        resetMenu.title.label = 'Reset Tutorial to a Clean Copy';
        tutorials.forEach((t, rank) => {
          known.set(t.number, t);
          launcher?.add({ command: CommandIDs.open, args: { number: t.number, mode: 'card' }, category: CATEGORY, rank });
          palette?.addItem({ command: CommandIDs.open, args: { number: t.number }, category: 'LayerQ', rank });
          palette?.addItem({ command: CommandIDs.reset, args: { number: t.number }, category: 'LayerQ', rank: 100 + rank });
          openMenu.addItem({ command: CommandIDs.open, args: { number: t.number, mode: 'menu' } });
          resetMenu.addItem({ command: CommandIDs.reset, args: { number: t.number, mode: 'menu' } });
        });
        if (menu) {
          menu.addItem({ type: 'submenu', submenu: openMenu });
          menu.addItem({ type: 'submenu', submenu: resetMenu });
          menu.addItem({ type: 'separator' });
          menu.addItem({ command: CommandIDs.syllabus });
          menu.addItem({ command: CommandIDs.health });
        }
      })
      .catch(reason => {
        // without the server extension there is nothing to list; the health command still explains
        console.warn('layerq-nb: the server extension did not answer (is layerq_nb installed in the server?)', reason);
        menu?.addItem({ command: CommandIDs.health });
      });
  }
};

export default plugin;
