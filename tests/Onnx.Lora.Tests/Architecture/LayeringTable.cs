using System.Xml.Linq;

namespace Onnx.Lora.Tests.Architecture;

/// <summary>One row of DESIGN.md's layering table: a project and the projects it may reference.</summary>
internal sealed record LayerRow(string Folder, string Project, IReadOnlySet<string> MayReference);

/// <summary>
/// DESIGN.md's layering table (the source of truth) and the checks against it, kept free of file and assembly access
/// so the tests can also feed it a layering that breaks the rules and see the violation reported.
/// </summary>
internal static class LayeringTable
{
    private const string Section = "## Layout";

    /// <summary>The rows of the first table under "## Layout" whose header has "project" and "may reference" columns.</summary>
    public static IReadOnlyList<LayerRow> Parse(string markdown)
    {
        string[] lines = markdown.Split('\n').Select(l => l.TrimEnd('\r')).ToArray();
        int start = Array.FindIndex(lines, l => l.Trim() == Section);
        if (start < 0)
        {
            throw new FormatException($"DESIGN.md has no '{Section}' section.");
        }

        int header = -1;
        for (int i = start + 1; i < lines.Length && !lines[i].StartsWith("## ", StringComparison.Ordinal); i++)
        {
            if (IsTableLine(lines[i]) && Cells(lines[i]).Contains("may reference"))
            {
                header = i;
                break;
            }
        }

        if (header < 0)
        {
            throw new FormatException($"'{Section}' has no table with a 'may reference' column.");
        }

        string[] names = Cells(lines[header]);
        int folder = Array.IndexOf(names, "folder");
        int project = Array.IndexOf(names, "project");
        int may = Array.IndexOf(names, "may reference");
        if (folder < 0 || project < 0)
        {
            throw new FormatException("The layering table needs 'folder' and 'project' columns.");
        }

        var rows = new List<LayerRow>();
        for (int i = header + 2; i < lines.Length && IsTableLine(lines[i]); i++)
        {
            string[] cells = Cells(lines[i]);
            if (cells.Length != names.Length)
            {
                throw new FormatException($"DESIGN.md layering table line {i + 1} has {cells.Length} cells; the header has {names.Length}.");
            }

            string allowed = cells[may];
            IReadOnlySet<string> set = allowed is "—" or "-" or ""
                ? new HashSet<string>()
                : allowed.Split(',').Select(s => s.Trim().Trim('`')).ToHashSet(StringComparer.Ordinal);
            rows.Add(new LayerRow(cells[folder].Trim('`'), cells[project].Trim('`'), set));
        }

        return rows;
    }

    /// <summary>
    /// Every way <paramref name="declared"/> (a project's ProjectReferences) and <paramref name="used"/> (the projects
    /// its built assembly references) break the table, one line each; empty when the layering holds.
    /// </summary>
    public static IReadOnlyList<string> Violations(
        IReadOnlyList<LayerRow> table,
        IReadOnlyDictionary<string, IReadOnlySet<string>> declared,
        IReadOnlyDictionary<string, IReadOnlySet<string>> used)
    {
        var violations = new List<string>();
        var rows = table.ToDictionary(r => r.Project, StringComparer.Ordinal);
        foreach (string project in declared.Keys.Where(p => !rows.ContainsKey(p)).Order(StringComparer.Ordinal))
        {
            violations.Add($"{project}: has no row in DESIGN.md's layering table.");
        }

        foreach (LayerRow row in table)
        {
            if (!declared.TryGetValue(row.Project, out IReadOnlySet<string>? refs))
            {
                violations.Add($"{row.Project}: in DESIGN.md's layering table but no such project exists.");
                continue;
            }

            foreach (string extra in refs.Except(row.MayReference).Order(StringComparer.Ordinal))
            {
                violations.Add($"{row.Project} → {extra}: a ProjectReference the table forbids.");
            }

            foreach (string missing in row.MayReference.Except(refs).Order(StringComparer.Ordinal))
            {
                violations.Add($"{row.Project} → {missing}: allowed by the table but not a ProjectReference (keep the table exact).");
            }

            if (used.TryGetValue(row.Project, out IReadOnlySet<string>? actual))
            {
                foreach (string forbidden in actual.Except(row.MayReference).Order(StringComparer.Ordinal))
                {
                    violations.Add($"{row.Project} → {forbidden}: the built assembly uses a project the table forbids.");
                }
            }
        }

        return violations;
    }

    /// <summary>Names among <paramref name="typeNames"/> that speak of LoRA (the IR must know nothing of it).</summary>
    public static IReadOnlyList<string> LoraNamedTypes(IEnumerable<string> typeNames) =>
        typeNames.Where(n => n.Contains("Lora", StringComparison.OrdinalIgnoreCase)).Order(StringComparer.Ordinal).ToList();

    /// <summary>The project names a .csproj references (file names of its ProjectReference items, without extension).</summary>
    public static IReadOnlySet<string> ProjectReferences(string csprojXml) =>
        XDocument.Parse(csprojXml).Descendants("ProjectReference")
            .Select(e => (string?)e.Attribute("Include") ?? "")
            .Select(p => Path.GetFileNameWithoutExtension(p.Replace('\\', '/')))
            .ToHashSet(StringComparer.Ordinal);

    /// <summary>The assembly a .csproj builds: its AssemblyName, else the project name.</summary>
    public static string AssemblyNameOf(string project, string csprojXml) =>
        XDocument.Parse(csprojXml).Descendants("AssemblyName").Select(e => e.Value.Trim()).LastOrDefault(v => v.Length > 0) ?? project;

    private static bool IsTableLine(string line) => line.TrimStart().StartsWith('|');

    private static string[] Cells(string line)
    {
        string t = line.Trim();
        return t.Trim('|').Split('|').Select(c => c.Trim()).ToArray();
    }
}
