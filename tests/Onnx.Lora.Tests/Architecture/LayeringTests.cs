using System.Reflection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Architecture;

/// <summary>
/// The layering DESIGN.md states is the layering the code has: every project's ProjectReferences equal its row's
/// "may reference" cell, every built assembly uses only projects that cell names, and the IR knows nothing of LoRA.
/// </summary>
[TestClass]
public sealed class LayeringTests
{
    private const string IrProject = "Onnx.Lora.Ir";

    private static readonly Lazy<IReadOnlyList<LayerRow>> s_table =
        new(() => LayeringTable.Parse(File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "DESIGN.md"))));

    private static readonly Lazy<IReadOnlyDictionary<string, string>> s_projects = new(FindProjects);

    [TestMethod]
    public void DesignTable_Parse_HasARowPerLayerAndTheIrAtTheBottom()
    {
        IReadOnlyList<LayerRow> table = s_table.Value;

        Assert.IsGreaterThanOrEqualTo(8, table.Count);
        LayerRow ir = table.Single(r => r.Project == IrProject);
        Assert.IsEmpty(ir.MayReference);
        Assert.AreEqual(table.Count, table.Select(r => r.Project).Distinct().Count(), "a project has two rows");
    }

    [TestMethod]
    public void ProjectReferences_EveryProject_EqualItsDesignRow()
    {
        IReadOnlyList<string> violations = LayeringTable.Violations(s_table.Value, Declared(), new Dictionary<string, IReadOnlySet<string>>());

        Assert.IsEmpty(violations, string.Join("\n", violations));
    }

    [TestMethod]
    public void BuiltAssemblies_OnnxLoraReferences_StayInsideTheirDesignRow()
    {
        Dictionary<string, string> assemblyToProject = s_projects.Value.ToDictionary(
            p => LayeringTable.AssemblyNameOf(p.Key, File.ReadAllText(p.Value)), p => p.Key, StringComparer.Ordinal);
        string solution = File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "Onnx.Lora.sln"));
        var used = new Dictionary<string, IReadOnlySet<string>>();
        foreach ((string assemblyName, string project) in assemblyToProject)
        {
            // Projects outside the solution (the libtorch peer) are not built by this run; their csproj is checked above.
            if (!solution.Contains($"\"{project}\"", StringComparison.Ordinal))
            {
                continue;
            }

            Assembly assembly = Assembly.Load(new AssemblyName(assemblyName));
            used[project] = assembly.GetReferencedAssemblies()
                .Select(a => a.Name is { } n && assemblyToProject.TryGetValue(n, out string? p) ? p : null)
                .OfType<string>()
                .ToHashSet(StringComparer.Ordinal);
        }

        IReadOnlyList<string> violations = LayeringTable.Violations(s_table.Value, Declared(), used);

        Assert.IsGreaterThanOrEqualTo(11, used.Count, "fewer built assemblies than expected were checked");
        Assert.IsEmpty(violations, string.Join("\n", violations));
    }

    [TestMethod]
    public void IrAssembly_Types_NoneNamedLora()
    {
        Assembly ir = Assembly.Load(new AssemblyName(IrProject));

        IReadOnlyList<string> lora = LayeringTable.LoraNamedTypes(ir.GetTypes().Select(t => t.Name));

        Assert.IsGreaterThan(20, ir.GetTypes().Length);
        Assert.IsEmpty(lora, "the IR must know nothing of LoRA: " + string.Join(", ", lora));
    }

    [TestMethod]
    public void Violations_ForbiddenProjectReference_IsReported()
    {
        LayerRow[] table = [Row("A"), Row("B", "A"), Row("C", "A", "B")];
        var declared = Declared(("A", ["B"]), ("B", ["A"]), ("C", ["A", "B"]));

        IReadOnlyList<string> violations = LayeringTable.Violations(table, declared, new Dictionary<string, IReadOnlySet<string>>());

        CollectionAssert.AreEqual(new[] { "A → B: a ProjectReference the table forbids." }, violations.ToArray());
    }

    [TestMethod]
    public void Violations_AssemblyUsingATransitiveProject_IsReported()
    {
        // C may reference only B; B references A; C's code reaching A through B's reference is still forbidden.
        LayerRow[] table = [Row("A"), Row("B", "A"), Row("C", "B")];
        var declared = Declared(("A", []), ("B", ["A"]), ("C", ["B"]));
        var used = Declared(("C", ["A", "B"]));

        IReadOnlyList<string> violations = LayeringTable.Violations(table, declared, used);

        CollectionAssert.AreEqual(new[] { "C → A: the built assembly uses a project the table forbids." }, violations.ToArray());
    }

    [TestMethod]
    public void Violations_ProjectWithoutRowOrRowWithoutProject_AreReported()
    {
        LayerRow[] table = [Row("A"), Row("Gone", "A")];
        var declared = Declared(("A", []), ("New", ["A"]));

        IReadOnlyList<string> violations = LayeringTable.Violations(table, declared, new Dictionary<string, IReadOnlySet<string>>());

        CollectionAssert.AreEquivalent(
            new[] { "New: has no row in DESIGN.md's layering table.", "Gone: in DESIGN.md's layering table but no such project exists." },
            violations.ToArray());
    }

    [TestMethod]
    public void LoraNamedTypes_TypeNamedLora_IsReported()
    {
        IReadOnlyList<string> lora = LayeringTable.LoraNamedTypes(["Graph", "Node", "LoraException", "OnnxReader"]);

        CollectionAssert.AreEqual(new[] { "LoraException" }, lora.ToArray());
    }

    [TestMethod]
    public void Parse_RowWithoutReferences_GivesEmptySetAndStripsBackticks()
    {
        const string Markdown = "# x\n## Layout\ntext\n| folder | project | owns | may reference |\n|---|---|---|---|\n"
            + "| src/A/ | `A` | a | — |\n| src/B/ | B | b | A, `C` |\n\n## Next\n| folder | project | may reference |\n";

        IReadOnlyList<LayerRow> rows = LayeringTable.Parse(Markdown);

        Assert.HasCount(2, rows);
        Assert.AreEqual("A", rows[0].Project);
        Assert.IsEmpty(rows[0].MayReference);
        CollectionAssert.AreEquivalent(new[] { "A", "C" }, rows[1].MayReference.ToArray());
    }

    private static Dictionary<string, IReadOnlySet<string>> Declared() =>
        s_projects.Value.ToDictionary(p => p.Key, p => LayeringTable.ProjectReferences(File.ReadAllText(p.Value)));

    private static Dictionary<string, IReadOnlySet<string>> Declared(params (string Project, string[] Refs)[] projects) =>
        projects.ToDictionary(p => p.Project, p => (IReadOnlySet<string>)p.Refs.ToHashSet(StringComparer.Ordinal));

    private static LayerRow Row(string project, params string[] mayReference) =>
        new($"src/{project}/", project, mayReference.ToHashSet(StringComparer.Ordinal));

    // Every project of the repository (src/, tools/, tests/), by name; build outputs are not projects.
    private static Dictionary<string, string> FindProjects()
    {
        string root = Fixtures.RepoRoot;
        return new[] { "src", "tools", "tests" }
            .SelectMany(d => Directory.EnumerateFiles(Path.Combine(root, d), "*.csproj", SearchOption.AllDirectories))
            .Where(p => !Path.GetRelativePath(root, p).Split(Path.DirectorySeparatorChar).Any(s => s is "bin" or "obj"))
            .ToDictionary(p => Path.GetFileNameWithoutExtension(p), p => p, StringComparer.Ordinal);
    }
}
