using System.Reflection;
using System.Runtime.InteropServices;
using KvmSharp.Interop;
using KvmSharp.Registers;

namespace KvmSharp.Tests.Interop;

/// <summary>Makes sure nothing in the interop layer escapes the generated layout assertions.</summary>
[TestFixture]
public class UapiLayoutGuardTests
{
    private static readonly string[] EmittedNamespaces =
        [UapiLayoutGenerator.CommonNamespace, .. UapiLayoutGenerator.Arches.Select(a => UapiLayoutGenerator.ArchScope(a).Namespace)];

    private static IEnumerable<Type> NativeStructs() =>
        UapiLayoutGenerator.Library.GetTypes().Where(t =>
            t.IsValueType && !t.IsEnum
            && t.Namespace?.StartsWith(UapiLayoutGenerator.CommonNamespace, StringComparison.Ordinal) == true
            && t.StructLayoutAttribute?.Value == LayoutKind.Explicit);

    private static IEnumerable<Type> UapiStructs() =>
        UapiLayoutGenerator.Library.GetTypes().Where(t => t.GetCustomAttribute<UapiAttribute>() is not null);

    /// <summary>The <c>ulong</c> members of the id classes that are no uapi value: keys of the sets that do not move with ONE_REG.</summary>
    private static readonly MemberInfo[] NotUapiValues =
    [
        typeof(Arm64RegisterIds).GetField(nameof(Arm64RegisterIds.MpStateKey))!,
        typeof(Arm64RegisterIds).GetField(nameof(Arm64RegisterIds.EventsKey))!,
    ];

    private static IEnumerable<Type> AllIdClasses() => UapiLayoutGenerator.Arches.SelectMany(UapiLayoutGenerator.IdClasses);

    private static IEnumerable<LayoutCheck> AllChecks() => UapiLayoutGenerator.Arches.SelectMany(UapiLayoutGenerator.Checks);

    private static IEnumerable<FieldInfo> AllIoctlFields() =>
        new[] { typeof(KvmIoctls) }.Concat(typeof(KvmIoctls).GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic))
            .SelectMany(UapiLayoutGenerator.IoctlFieldsOf);

    [Test]
    public void Every_native_struct_carries_Uapi()
    {
        var missing = NativeStructs().Where(t => t.GetCustomAttribute<UapiAttribute>() is null).Select(t => t.FullName);

        Assert.That(missing, Is.Empty, "explicit-layout interop structs without [Uapi] are never checked against the headers");
    }

    [Test]
    public void Every_Uapi_struct_is_in_a_namespace_the_generator_emits()
    {
        var stray = UapiStructs().Where(t => !EmittedNamespaces.Contains(t.Namespace)).Select(t => t.FullName);

        Assert.That(stray, Is.Empty);
    }

    [Test]
    public void Every_Uapi_struct_has_its_declared_size()
    {
        var wrong = UapiStructs()
            .Where(t => t.StructLayoutAttribute?.Size != UapiLayoutGenerator.SizeOf(t))
            .Select(t => $"{t.FullName}: declared {t.StructLayoutAttribute?.Size}, actual {UapiLayoutGenerator.SizeOf(t)}");

        Assert.That(wrong, Is.Empty);
    }

    [Test]
    public void Every_ioctl_is_named_after_its_field()
    {
        var fields = AllIoctlFields().ToList();
        var misnamed = fields.Select(f => (Field: f, Ioctl: (KvmIoctl)f.GetValue(null)!))
            .Where(x => x.Ioctl.Name != x.Field.Name)
            .Select(x => $"{UapiLayoutGenerator.Describe(x.Field)} is named {x.Ioctl.Name}");

        Assert.That(fields, Is.Not.Empty);
        Assert.That(misnamed, Is.Empty);
    }

    [Test]
    public void Every_ioctl_is_emitted_on_its_architectures()
    {
        var emitted = UapiLayoutGenerator.Arches.ToDictionary(a => a, a => UapiLayoutGenerator.Checks(a).Select(c => c.Source).ToHashSet());
        var missing = new List<string>();
        foreach (var field in AllIoctlFields())
        {
            var arches = field.DeclaringType == typeof(KvmIoctls)
                ? UapiLayoutGenerator.Arches
                : UapiLayoutGenerator.Arches.Where(a => UapiLayoutGenerator.ArchScope(a).Ioctls == field.DeclaringType).ToArray();
            if (arches.Length == 0)
                missing.Add($"{UapiLayoutGenerator.Describe(field)}: its class is no architecture's");
            missing.AddRange(arches.Where(a => !emitted[a].Contains(field)).Select(a => $"{UapiLayoutGenerator.Describe(field)} on {a}"));
        }

        Assert.That(missing, Is.Empty);
    }

    [TestCase("x86_64")]
    [TestCase("arm64")]
    [TestCase("s390x")]
    public void Every_struct_and_field_gets_an_assertion(string arch)
    {
        var checks = UapiLayoutGenerator.Checks(arch);
        var perSource = checks.GroupBy(c => c.Source).ToDictionary(g => g.Key, g => g.Count());
        var structs = UapiLayoutGenerator.StructTypes(arch);
        var fields = structs.SelectMany(UapiLayoutGenerator.InstanceFields).ToList();

        var uncovered = structs.Cast<MemberInfo>().Concat(fields)
            .Where(m => perSource.GetValueOrDefault(m) == 0)
            .Select(UapiLayoutGenerator.Describe);

        using (Assert.EnterMultipleScope())
        {
            Assert.That(structs, Has.Count.GreaterThan(20));
            Assert.That(uncovered, Is.Empty);
            // An offset and a size per field, a size per struct (and a union start per kvm_run member).
            Assert.That(checks, Has.Count.GreaterThanOrEqualTo(2 * fields.Count + structs.Count));
            Assert.That(UapiLayoutGenerator.Generate(arch).Split('\n').Count(l => l.StartsWith("_Static_assert(", StringComparison.Ordinal)),
                Is.EqualTo(checks.Count));
        }
    }

    [Test]
    public void Every_register_id_class_is_emitted_on_an_architecture()
    {
        // The ONE_REG id classes, and the interop classes of other uapi constants (named *Uapi).
        var idClasses = UapiLayoutGenerator.Library.GetTypes()
            .Where(t => (t.Namespace == typeof(Arm64RegisterIds).Namespace && t.Name.EndsWith("RegisterIds", StringComparison.Ordinal))
                || (t.Namespace?.StartsWith(UapiLayoutGenerator.CommonNamespace, StringComparison.Ordinal) == true
                    && t.IsAbstract && t.IsSealed && t.Name.EndsWith("Uapi", StringComparison.Ordinal)));

        Assert.That(AllIdClasses(), Is.EquivalentTo(idClasses));
    }

    [Test]
    public void Every_register_id_member_carries_UapiValue()
    {
        var members = AllIdClasses().SelectMany(UapiLayoutGenerator.IdMembers).ToList();
        var missing = members.Except(NotUapiValues)
            .Where(m => m.GetCustomAttribute<UapiValueAttribute>() is null)
            .Select(UapiLayoutGenerator.Describe);

        using (Assert.EnterMultipleScope())
        {
            Assert.That(missing, Is.Empty, "ids, id constants and id factories without [UapiValue] are never checked against the headers");
            Assert.That(NotUapiValues.Except(members), Is.Empty, "a stale exemption");
            Assert.That(NotUapiValues.Where(m => m.GetCustomAttribute<UapiValueAttribute>() is not null), Is.Empty, "an exempted member is checked after all");
        }
    }

    [Test]
    public void Every_UapiValue_member_gets_an_assertion()
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static | BindingFlags.Instance | BindingFlags.DeclaredOnly;
        var marked = UapiLayoutGenerator.Library.GetTypes()
            .SelectMany(t => t.GetMembers(all))
            .Where(m => m.GetCustomAttribute<UapiValueAttribute>() is not null)
            .ToList();
        var emitted = AllChecks().Select(c => c.Source).ToHashSet();

        Assert.That(marked, Has.Count.GreaterThan(40));
        Assert.That(marked.Where(m => !emitted.Contains(m)).Select(UapiLayoutGenerator.Describe), Is.Empty,
            "[UapiValue] on a member that is no static ulong field or property, no id factory, or outside the id classes");
    }

    [Test]
    public void Every_id_factory_is_checked_with_every_value_of_every_argument()
    {
        var checks = AllChecks().Where(c => c.Arguments is not null).ToList();
        var factories = AllIdClasses().SelectMany(UapiLayoutGenerator.IdMembers).OfType<MethodInfo>().ToList();
        var missing = new List<string>();
        foreach (var factory in factories)
        {
            var arguments = checks.Where(c => c.Source == factory).Select(c => c.Arguments!).ToList();
            int count = factory.GetParameters().Length;
            for (int i = 0; i < count; i++)
            {
                // Every value the factory accepts here (the others 0), found by trying all up to the probe limit.
                var accepted = Enumerable.Range(-1, UapiLayoutGenerator.ArgumentProbeLimit + 1)
                    .Where(v => UapiLayoutGenerator.Accepts(factory, [.. Enumerable.Range(0, count).Select(j => (object)(j == i ? v : 0))]));
                missing.AddRange(accepted.Except(arguments.Select(a => a[i]))
                    .Select(v => $"{UapiLayoutGenerator.Describe(factory)}: argument {i} = {v}"));
            }
        }

        Assert.That(factories.Select(f => f.Name), Is.SupersetOf(new[] { "X", "Spsr", "V", "SystemRegister" }));
        Assert.That(missing, Is.Empty);
    }

    [Test]
    public void The_s390x_sync_moves_only_checked_ids_each_under_its_macro_name()
    {
        // S390xRegisterSync's private Reg enum, RegId and RegName: the ids its ONE_REG calls send and name.
        var sync = typeof(S390xRegisterSync);
        var reg = sync.GetNestedType("Reg", BindingFlags.NonPublic)!;
        var regId = sync.GetMethod("RegId", BindingFlags.NonPublic | BindingFlags.Static)!;
        var regName = sync.GetMethod("RegName", BindingFlags.NonPublic | BindingFlags.Static)!;
        var macros = UapiLayoutGenerator.IdMembers(typeof(S390xRegisterIds)).OfType<FieldInfo>()
            .Select(f => (Value: (ulong)f.GetValue(null)!, f.GetCustomAttribute<UapiValueAttribute>()!.Expression))
            .Where(x => x.Expression.StartsWith("KVM_REG_S390_", StringComparison.Ordinal))
            .ToList();

        var used = Enum.GetValues(reg).Cast<object>()
            .Select(r => (Value: (ulong)regId.Invoke(null, [r])!, Expression: (string)regName.Invoke(null, [r])!))
            .ToList();

        Assert.That(used, Is.EquivalentTo(macros), "each Reg has its own checked id, sent under the name of the macro checked for it");
    }
}
